"""`python -m preprocessing.show_augmentation`: the PNG grid of augmented training samples, kept
at its documented path; the command is `ssd_tf.cli.show_augmentation`."""


if __name__ == '__main__':
    # The command is ssd_tf.cli.show_augmentation,
    # run without importing it (the library imports no program).
    import runpy
    runpy.run_module('ssd_tf.cli.show_augmentation', run_name='__main__', alter_sys=True)
