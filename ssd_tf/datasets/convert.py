"""`python -m ssd_tf.datasets.convert`: the converter to TFRecords, kept at its documented
path; the command is `ssd_tf.cli.convert` (also the console command `ssd-convert`)."""


if __name__ == '__main__':
    # The command is ssd_tf.cli.convert,
    # run without importing it (the library imports no program).
    import runpy
    runpy.run_module('ssd_tf.cli.convert', run_name='__main__', alter_sys=True)
