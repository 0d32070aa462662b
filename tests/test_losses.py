"""The multibox loss: the slim reference, the default's mining and normalisation, edge cases."""
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings, strategies as st

import slim_port
from ssd_tf import losses

# A toy "network" of two layers: [B, 2, 2, 2, C] and [B, 1, 1, 3, C] -> 11 anchors an image.
SHAPES = [(2, 2, 2), (1, 1, 3)]
C = 4


def _batch(rng, b, pos_frac=0.2):
    logits = [rng.normal(size=(b,) + s + (C,)).astype(np.float32) * 2 for s in SHAPES]
    locs = [rng.normal(size=(b,) + s + (4,)).astype(np.float32) for s in SHAPES]
    gscores = [rng.uniform(0, 1, size=(b,) + s).astype(np.float32) for s in SHAPES]
    gscores = [np.where(rng.uniform(size=g.shape) < pos_frac, 0.5 + g / 2, g / 2)
               for g in gscores]
    gclasses = [np.where(g > 0.5, rng.integers(1, C, size=g.shape), 0).astype(np.int64)
                for g in gscores]
    glocs = [rng.normal(size=(b,) + s + (4,)).astype(np.float32) for s in SHAPES]
    return logits, locs, gclasses, glocs, gscores


def _np(d):
    return {k: float(v) for k, v in d.items()}


@pytest.mark.parametrize('seed', range(4))
def test_reference_matches_literal_slim_loss(seed):
    args = _batch(np.random.default_rng(seed), 3)
    got = _np(losses.ssd_losses(*args, reference_compat=True))
    want = slim_port.ssd_losses(*args)
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-6), k
    assert got['total'] == pytest.approx(sum(want.values()), rel=1e-5)


def test_reference_strict_cut_uses_n_neg_minus_one():
    # One image, one positive, 10 negatives with distinct background probabilities.
    # n_neg = int(3 * 1) + 1 = 4; negatives strictly below the 4th smallest p0 -> 3 of them.
    p0 = np.array([.9, .1, .2, .3, .4, .5, .6, .7, .8, .85, .95], np.float32)
    logits = np.log(np.stack([p0, 1 - p0], -1))[None, :, None, None, :]  # [1, 11, 1, 1, 2]
    gscores = np.zeros([1, 11, 1, 1], np.float32)
    gscores[0, 0] = .9
    gclasses = (gscores > .5).astype(np.int64)
    zeros = np.zeros([1, 11, 1, 1, 4], np.float32)
    got = _np(losses.ssd_losses([logits], [zeros], [gclasses], [zeros], [gscores],
                                reference_compat=True))
    # mined: p0 = .1, .2, .3 -> -(log .1 + log .2 + log .3) / batch_size 1
    assert got['cross_entropy_neg'] == pytest.approx(-np.log([.1, .2, .3]).sum(), rel=1e-5)
    # default: exactly 3 x 1 negatives, the same three here, divided by 1 positive
    got_d = _np(losses.ssd_losses([logits], [zeros], [gclasses], [zeros], [gscores]))
    assert got_d['cross_entropy_neg'] == pytest.approx(-np.log([.1, .2, .3]).sum(), rel=1e-5)


def test_slim_port_hand_worked():
    # The port itself on a case worked by hand: 1 image, 3 anchors, 2 classes, logits 0 or
    # log-odds so that p0 = .5, .2, .8; anchor 0 positive (gscore .9, class 1).
    # n_positives 1 -> n_neg = int(3 * 1) + 1 = 4, capped at the 2 negatives -> 2;
    # top_k(-[1, .2, .8], 2) = [-.2, -.8] -> max_hard_pred .8; negatives with p0 < .8: anchor 1.
    # cross_entropy_pos = -log(1 - .5) = .693147; cross_entropy_neg = -log .2 = 1.609438;
    # localization: anchor 0's |d| = .5, 2 -> .5 * .25 + (2 - .5) = 1.625 (others weight 0).
    p0 = np.array([.5, .2, .8])
    logits = np.log(np.stack([p0, 1 - p0], -1)).astype(np.float32)[None, :, None, None]
    gscores = np.array([.9, .3, 0.], np.float32)[None, :, None, None]
    gclasses = np.array([1, 0, 0])[None, :, None, None]
    locs = np.zeros([1, 3, 1, 1, 4], np.float32)
    glocs = np.zeros_like(locs)
    glocs[0, 0, 0, 0, :2] = [.5, -2.]
    glocs[0, 1, 0, 0] = 7.  # a negative: no localisation loss
    want = {'cross_entropy_pos': .693147, 'cross_entropy_neg': 1.609438, 'localization': 1.625}
    got = slim_port.ssd_losses([logits], [locs], [gclasses], [glocs], [gscores])
    assert got == pytest.approx(want, rel=1e-5)
    got = _np(losses.ssd_losses([logits], [locs], [gclasses], [glocs], [gscores],
                                reference_compat=True))
    assert {k: got[k] for k in want} == pytest.approx(want, rel=1e-5)


def test_default_mines_per_image_and_normalises_by_positives():
    # Image 0: 1 positive, image 1: 2 positives; 8 negatives each with known p0.
    k = 11
    p0 = np.stack([np.linspace(.05, .9, k), np.linspace(.1, .95, k)]).astype(np.float32)
    logits = np.log(np.stack([p0, 1 - p0], -1))[:, :, None, None, :]  # [2, 11, 1, 1, 2]
    gclasses = np.zeros([2, k, 1, 1], np.int64)
    gclasses[0, 10] = 1
    gclasses[1, 9:] = 1
    gscores = gclasses.astype(np.float32)
    zeros = np.zeros([2, k, 1, 1, 4], np.float32)
    got = _np(losses.ssd_losses([logits], [zeros], [gclasses], [zeros], [gscores]))
    # image 0 mines its 3 hardest negatives (lowest p0: indices 0, 1, 2),
    # image 1 its 6 hardest (indices 0..5); normalised by 3 positives.
    want_neg = (-np.log(p0[0, :3]).sum() - np.log(p0[1, :6]).sum()) / 3
    want_pos = (-np.log(1 - p0[0, 10]) - np.log(1 - p0[1, 9:]).sum()) / 3
    assert got['cross_entropy_neg'] == pytest.approx(want_neg, rel=1e-5)
    assert got['cross_entropy_pos'] == pytest.approx(want_pos, rel=1e-5)
    # the slim loss mines over the batch and divides by the batch size instead
    ref = _np(losses.ssd_losses([logits], [zeros], [gclasses], [zeros], [gscores],
                                reference_compat=True))
    assert ref['cross_entropy_pos'] == pytest.approx(want_pos * 3 / 2, rel=1e-5)


def test_ties_are_deterministic_and_exact_count():
    # All logits equal: every negative ties. Exactly 3 * n_pos must be used.
    k = 20
    logits = np.zeros([1, k, 1, 1, 3], np.float32)
    gclasses = np.zeros([1, k, 1, 1], np.int64)
    gclasses[0, :2] = 2
    zeros = np.zeros([1, k, 1, 1, 4], np.float32)
    args = ([logits], [zeros], [gclasses], [zeros], [gclasses.astype(np.float32)])
    a = _np(losses.ssd_losses(*args))
    b = _np(losses.ssd_losses(*args))
    assert a == b
    # 6 negatives x log(3) / 2 positives
    assert a['cross_entropy_neg'] == pytest.approx(6 * np.log(3.) / 2, rel=1e-6)


# The mining's cut: values [3, 1, 3, 2]; the two 3s tie, the lower index goes first.
@pytest.mark.parametrize('partial', [None, 2])
@pytest.mark.parametrize('n, want', [
    (0, [0, 0, 0, 0]), (1, [1, 0, 0, 0]), (2, [1, 0, 1, 0]), (3, [1, 0, 1, 1]),
    (4, [1, 1, 1, 1])])
def test_top_n_mask_golden(n, want, partial):
    # partial=2: n <= 2 takes the top_k branch, n >= 3 the full sort
    got = losses._top_n_mask(tf.constant([[3., 1., 3., 2.]]), tf.constant([n]), partial)
    assert got.numpy()[0].astype(int).tolist() == want


def _stable_top_n(values, n):
    """Oracle: rank by a stable descending argsort (numpy), keep ranks < n."""
    out = np.zeros(values.shape, bool)
    for b, row in enumerate(values):
        order = np.argsort(-row, kind='stable')
        out[b, order[:n[b]]] = True
    return out


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4), st.integers(1, 40), st.integers(1, 6), st.sampled_from([None, 1, 5]),
       st.integers(0, 2 ** 31 - 1))
def test_top_n_mask_matches_a_stable_sort(rows, k, levels, partial, seed):
    # few distinct levels: many ties at the cut
    rng = np.random.default_rng(seed)
    values = (rng.integers(0, levels, size=(rows, k)) / levels - (rng.random((rows, k)) < .2)
              ).astype(np.float32)
    n = rng.integers(0, k + 1, size=rows).astype(np.int32)
    got = losses._top_n_mask(tf.constant(values), tf.constant(n), partial).numpy()
    np.testing.assert_array_equal(got, _stable_top_n(values, n))
    np.testing.assert_array_equal(got.sum(axis=1), n)


@pytest.mark.slow
def test_top_n_mask_compiles_with_xla():
    rng = np.random.default_rng(3)
    values = np.round(rng.random((3, 50)) * 4).astype(np.float32)
    for n in ([2, 0, 5], [2, 30, 50]):  # within `partial` (top_k), then beyond it (sort)
        fn = tf.function(lambda v, m: losses._top_n_mask(v, m, partial=8), jit_compile=True)
        got = fn(tf.constant(values), tf.constant(n, tf.int32)).numpy()
        np.testing.assert_array_equal(got, _stable_top_n(values, n))


def test_zero_positives_is_finite_zero():
    args = _batch(np.random.default_rng(0), 2, pos_frac=0.)
    args = (args[0], args[1], [np.zeros_like(g) for g in args[2]], args[3],
            [np.zeros_like(g) for g in args[4]])
    got = _np(losses.ssd_losses(*args))
    assert all(np.isfinite(v) for v in got.values())
    assert got['total'] == 0.


def test_image_without_positives_in_batch():
    rng = np.random.default_rng(1)
    logits, locs, gclasses, glocs, gscores = _batch(rng, 2, pos_frac=.3)
    for g in gclasses:
        g[1] = 0  # image 1 has no positive
    gscores = [np.where(g > 0, .8, .1).astype(np.float32) for g in gclasses]
    got = _np(losses.ssd_losses(logits, locs, gclasses, glocs, gscores))
    only0 = _np(losses.ssd_losses([x[:1] for x in logits], [x[:1] for x in locs],
                                  [x[:1] for x in gclasses], [x[:1] for x in glocs],
                                  [x[:1] for x in gscores]))
    # image 1 contributes nothing (no positives -> no mined negatives)
    for key in got:
        assert got[key] == pytest.approx(only0[key], rel=1e-5)


def test_large_logits_do_not_overflow():
    rng = np.random.default_rng(2)
    logits, locs, gclasses, glocs, gscores = _batch(rng, 2)
    logits = [x * 1e4 for x in logits]
    for rc in (False, True):
        got = _np(losses.ssd_losses(logits, locs, gclasses, glocs, gscores, reference_compat=rc))
        assert all(np.isfinite(v) for v in got.values()), (rc, got)
        assert got['cross_entropy_pos'] > 0


def test_label_smoothing_default_only():
    args = _batch(np.random.default_rng(3), 2)
    plain = _np(losses.ssd_losses(*args))
    smooth = _np(losses.ssd_losses(*args, label_smoothing=0.1))
    assert smooth['cross_entropy_pos'] != pytest.approx(plain['cross_entropy_pos'])
    assert smooth['localization'] == pytest.approx(plain['localization'])
    ref = _np(losses.ssd_losses(*args, reference_compat=True))
    ref_s = _np(losses.ssd_losses(*args, reference_compat=True, label_smoothing=0.1))
    assert ref == ref_s  # the original accepted and ignored it


def test_label_smoothing_golden():
    # one positive of class 1 with uniform logits over C=4: CE = -sum(q log(1/4)) = log 4
    # whatever the smoothing; with logits (0, L, 0, 0) and eps = 0.2 the target is
    # q = (0.05, 0.85, 0.05, 0.05): CE = -(0.85 log p1 + 0.15 log p_other).
    L = 2.
    logits = np.array([0., L, 0., 0.], np.float32)[None, None, None, None, :]
    gclasses = np.ones([1, 1, 1, 1], np.int64)
    zeros = np.zeros([1, 1, 1, 1, 4], np.float32)
    got = _np(losses.ssd_losses([logits], [zeros], [gclasses], [zeros], [np.ones([1, 1, 1, 1],
                                np.float32)], label_smoothing=0.2))
    z = np.exp(L) + 3
    want = -(0.85 * np.log(np.exp(L) / z) + 0.15 * np.log(1 / z))
    assert got['cross_entropy_pos'] == pytest.approx(want, rel=1e-5)


def test_localisation_smooth_l1_golden():
    # offsets differ by (0.5, 2, 0, -1): 0.5 * 0.25 + (2 - 0.5) + 0 + 0.5 * 1 -> 0.125 + 1.5 + .5
    locs = np.array([.5, 2., 0., -1.], np.float32)[None, None, None, None, :]
    zeros = np.zeros_like(locs)
    gclasses = np.ones([1, 1, 1, 1], np.int64)
    logits = np.zeros([1, 1, 1, 1, 2], np.float32)
    got = _np(losses.ssd_losses([logits], [locs], [gclasses], [zeros],
                                [np.ones([1, 1, 1, 1], np.float32)], alpha=2.))
    assert got['localization'] == pytest.approx(2 * 2.125)


def test_num_positives_override_scales():
    args = _batch(np.random.default_rng(5), 2)
    n = sum(int((g > 0).sum()) for g in args[2])
    a = _np(losses.ssd_losses(*args))
    b = _np(losses.ssd_losses(*args, num_positives=2 * n))
    assert b['total'] == pytest.approx(a['total'] / 2, rel=1e-5)


def test_out_of_range_labels_are_background():
    args = list(_batch(np.random.default_rng(6), 1))
    bad = [np.where(g > 0, 99, g) for g in args[2]]
    got = _np(losses.ssd_losses(args[0], args[1], bad, args[3], args[4]))
    assert all(np.isfinite(v) for v in got.values()) and got['cross_entropy_pos'] == 0.


# ------------------------------------------------------------------ class balance
@pytest.mark.parametrize('counts, power, want', [
    # n = (1, 4), mean 2.5: sqrt(2.5), sqrt(0.625) -> sqrt(2.5) (1, 1/2) scaled so that
    # 1 w1 + 4 w2 = 5: w1 = 5/3, w2 = 5/6.
    ([9., 1., 4.], 0.5, [1., 5. / 3., 5. / 6.]),
    # power 1: mean 2.5 over the present classes; 1 x 2.5 + 4 x 0.625 = 5 already; the absent
    # class gets 0.
    ([7., 1., 4., 0.], 1., [1., 2.5, 0.625, 0.]),
    ([7., 1., 4., 0.], 0., [1., 1., 1., 0.]),   # power 0: the unweighted loss
    ([7., 0., 0.], 1., [1., 1., 1.]),           # no positives at all
    ([0., 3., 3.], 1., [1., 1., 1.]),           # balanced already
])
def test_class_balance_weights_golden(counts, power, want):
    got = losses.class_balance_weights(tf.constant(counts), power).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6)


def _three_positives():
    # 3 anchors, C = 3: anchors 0 and 1 of class 1 with uniform logits (CE log 3), anchor 2 of
    # class 2 with logits (0, 0, log 2): p2 = 2/4, CE log 2. No negatives mined (ratio 0).
    logits = np.array([[0., 0., 0.], [0., 0., 0.], [0., 0., np.log(2.)]],
                      np.float32)[None, :, None, None, :]  # [1, 3, 1, 1, 3]
    gclasses = np.array([1, 2], np.int64)[[0, 0, 1]][None, :, None, None]
    locs = np.zeros([1, 3, 1, 1, 4], np.float32)
    glocs = np.full([1, 3, 1, 1, 4], .5, np.float32)
    return [logits], [locs], [gclasses], [glocs], [np.ones([1, 3, 1, 1], np.float32)]


def test_class_balance_loss_golden():
    args = _three_positives()
    plain = _np(losses.ssd_losses(*args, negative_ratio=0.))
    assert plain['cross_entropy_pos'] == pytest.approx((2 * np.log(3.) + np.log(2.)) / 3,
                                                       rel=1e-6)
    # counts (2, 1), mean 1.5: weights 0.75 and 1.5 (sum 2 x 0.75 + 1.5 = 3, no rescaling):
    # (0.75 x 2 log 3 + 1.5 log 2) / 3 = (log 3 + log 2) / 2
    got = _np(losses.ssd_losses(*args, negative_ratio=0., class_balance=1.))
    assert got['cross_entropy_pos'] == pytest.approx(np.log(6.) / 2, rel=1e-6)
    assert got['localization'] == pytest.approx(plain['localization'])
    assert got['cross_entropy_neg'] == plain['cross_entropy_neg'] == 0.
    # Given counts (e.g. the global batch's) are used instead of the batch's: equal counts
    # give weight 1, the unweighted loss.
    given = _np(losses.ssd_losses(*args, negative_ratio=0., class_balance=1.,
                                  class_positives=tf.constant([0., 5., 5.])))
    assert given['cross_entropy_pos'] == pytest.approx(plain['cross_entropy_pos'], rel=1e-6)


def test_class_balance_keeps_the_mining_and_one_class_batches():
    args = _batch(np.random.default_rng(8), 2)
    plain = _np(losses.ssd_losses(*args))
    got = _np(losses.ssd_losses(*args, class_balance=0.5))
    assert got['cross_entropy_pos'] != pytest.approx(plain['cross_entropy_pos'], rel=1e-4)
    assert got['cross_entropy_neg'] == pytest.approx(plain['cross_entropy_neg'])
    assert got['localization'] == pytest.approx(plain['localization'])
    # one foreground class only: its weight is 1 whatever the power
    one = list(args)
    one[2] = [np.where(g > 0, 2, 0) for g in args[2]]
    assert _np(losses.ssd_losses(*one, class_balance=1.)) == pytest.approx(
        _np(losses.ssd_losses(*one)))


def test_class_balance_refused_with_reference_compat():
    args = _batch(np.random.default_rng(9), 1)
    with pytest.raises(ValueError, match='class_balance with reference_compat'):
        losses.ssd_losses(*args, reference_compat=True, class_balance=0.5)


@pytest.mark.slow
@pytest.mark.parametrize('rc', [False, True])
def test_loss_compiles_with_xla(rc):
    args = _batch(np.random.default_rng(7), 2)
    balance = 0. if rc else 0.5
    fn = tf.function(lambda *a: losses.ssd_losses(*a, reference_compat=rc,
                                                  class_balance=balance), jit_compile=True)
    got = _np(fn(*[[tf.constant(x) for x in a] for a in args]))
    want = _np(losses.ssd_losses(*args, reference_compat=rc, class_balance=balance))
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6)


def test_gradients_flow():
    args = _batch(np.random.default_rng(8), 2)
    logits = [tf.Variable(x) for x in args[0]]
    locs = [tf.Variable(x) for x in args[1]]
    with tf.GradientTape() as tape:
        total = losses.ssd_losses(logits, locs, *args[2:])['total']
    grads = tape.gradient(total, logits + locs)
    assert all(g is not None and np.all(np.isfinite(g.numpy())) for g in grads)
    assert any(np.abs(g.numpy()).sum() > 0 for g in grads)
