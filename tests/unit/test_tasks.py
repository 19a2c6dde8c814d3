"""Pre-training tasks (Section 6): exact rotations, real blurring, fixed random labels, registry."""

import pytest
import torch
import torch.nn.functional as F

from pipeline_scripts.earlyphase import tasks


def _images(b=64, seed=0, h=32):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, h, h), dtype=torch.uint8, generator=g)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# --- rotation (6.2) ---------------------------------------------------------------------------


def test_rotation_is_exactly_n_quarter_turns_labelled_n():
    x, y = _images(), torch.full((64,), 7)
    out, n = tasks.rotate(x, y, _gen(1))
    assert out.shape == x.shape and out.dtype == torch.uint8 and n.dtype == torch.int64
    assert set(n.tolist()) == {0, 1, 2, 3}
    for i in range(x.shape[0]):
        assert torch.equal(out[i], torch.rot90(x[i], int(n[i]), dims=(-2, -1))), i


def test_rotation_direction_is_counter_clockwise():
    """One marked pixel at the top right: n=1 moves it top left, n=2 bottom left, n=3 bottom right."""
    x = torch.zeros(64, 1, 8, 8, dtype=torch.uint8)
    x[:, 0, 0, 7] = 255
    out, n = tasks.rotate(x, torch.zeros(64, dtype=torch.int64), _gen(2))
    where = {0: (0, 7), 1: (0, 0), 2: (7, 0), 3: (7, 7)}
    for i in range(64):
        r, c = where[int(n[i])]
        assert out[i, 0, r, c] == 255 and int(out[i].sum()) == 255, (i, int(n[i]))


def test_rotation_draws_are_keyed_by_generator():
    x, y = _images(), torch.zeros(64, dtype=torch.int64)
    _, a = tasks.rotate(x, y, tasks.batch_generator(3, 17))
    _, b = tasks.rotate(x, y, tasks.batch_generator(3, 17))  # resumed job, same step
    _, c = tasks.rotate(x, y, tasks.batch_generator(3, 18))  # next step
    _, d = tasks.rotate(x, y, tasks.batch_generator(4, 17))  # other replicate
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, d)


def test_rotation_rejects_non_square_images():
    with pytest.raises(ValueError, match="square"):
        tasks.rotate(torch.zeros(2, 3, 8, 4, dtype=torch.uint8), torch.zeros(2), _gen(0))


# --- blur (6.3) -------------------------------------------------------------------------------


def test_blur_is_4x_down_then_bilinear_up_to_rounding():
    x = _images(16)
    out = tasks.blur(x)
    assert out.shape == x.shape and out.dtype == torch.uint8
    ref = F.interpolate(
        F.avg_pool2d(x.float(), 4), size=(32, 32), mode="bilinear", align_corners=False
    )
    assert (out.float() - ref).abs().max() <= 1


def _high_frequency_energy(x):
    """Energy of the 2-D spectrum at or above half the Nyquist frequency along either axis."""
    f = torch.fft.fft2(x.float())
    freq = torch.fft.fftfreq(x.shape[-1]).abs()
    high = (freq[:, None] >= 0.25) | (freq[None, :] >= 0.25)
    return (f.abs() ** 2)[..., high].sum()


def test_blur_removes_high_frequencies_and_keeps_constants():
    x = _images(16)
    assert _high_frequency_energy(tasks.blur(x)) < 0.1 * _high_frequency_energy(x)
    const = torch.full((2, 3, 32, 32), 137, dtype=torch.uint8)
    assert torch.equal(tasks.blur(const), const)


def test_blur_rejects_bad_inputs():
    with pytest.raises(TypeError):
        tasks.blur(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="divisible"):
        tasks.blur(torch.zeros(1, 3, 30, 30, dtype=torch.uint8))


def test_blur_task_keeps_labels():
    x, y = _images(8), torch.arange(8)
    out, y2 = tasks.get("blur").batch(x, y, _gen(0))
    assert torch.equal(out, tasks.blur(x)) and torch.equal(y2, y)


# --- blur + rotation (6.3) --------------------------------------------------------------------


def test_blur_rotation_rotates_the_blurred_image():
    x, y = _images(), torch.full((64,), 9)
    task = tasks.get("blur_rotation")
    out, n = task.batch(x, y, _gen(5))
    _, n_rot = tasks.rotate(x, y, _gen(5))
    assert torch.equal(n, n_rot) and set(n.tolist()) == {0, 1, 2, 3}
    blurred = tasks.blur(x)
    for i in range(x.shape[0]):
        assert torch.equal(out[i], torch.rot90(blurred[i], int(n[i]), dims=(-2, -1))), i
    assert task.num_classes == 4 and tasks.get("rotation").num_classes == 4


# --- random labels (6.1) ----------------------------------------------------------------------


def test_random_labels_fixed_per_example_uniform_and_mostly_wrong():
    n, k = 20000, 10
    true = torch.randint(k, (n,), generator=_gen(0))
    new = tasks.get("random_labels").relabel(true, 7)
    assert new.shape == true.shape and new.dtype == torch.int64
    assert torch.equal(new, tasks.relabel_random(true, 7))  # same seed -> same labels
    assert torch.equal(new, tasks.relabel_random(true.flip(0), 7))  # depends on position only
    assert (new != tasks.relabel_random(true, 8)).float().mean() > 0.8  # other seed differs
    assert abs((new != true).float().mean().item() - 0.9) < 0.02
    freq = torch.bincount(new, minlength=k).float() / n
    assert freq.numel() == k and (freq - 1 / k).abs().max() < 0.015


# --- registry ---------------------------------------------------------------------------------


def test_registry_names_and_supervised_identity():
    assert set(tasks.REGISTRY) == {
        "supervised",
        "random_labels",
        "rotation",
        "blur",
        "blur_rotation",
    }
    for name, task in tasks.REGISTRY.items():
        assert task.name == name and task.description
    sup = tasks.get("supervised")
    assert sup.relabel is None and sup.batch is None and sup.num_classes is None


def test_unknown_task_lists_known_ones():
    with pytest.raises(ValueError) as err:
        tasks.get("jigsaw")
    assert "jigsaw" in str(err.value)
    assert all(name in str(err.value) for name in tasks.REGISTRY)


def test_task_draws_come_from_cpu_generators_whatever_the_data_device():
    """The same seed gives the same rotations on any device: every generator is a CPU one
    (rng.generator takes no device), draws are made on the CPU and moved to the batch."""
    assert tasks.batch_generator(3, 17).device.type == "cpu"
    assert "device" not in tasks.rng.generator.__code__.co_varnames
    x, y = _images(), torch.zeros(64, dtype=torch.int64)
    _, n = tasks.rotate(x, y, tasks.batch_generator(3, 17))
    expected = torch.randint(4, (64,), generator=tasks.batch_generator(3, 17))
    assert torch.equal(n, expected)
    # on another device the labels are the CPU draw moved there (meta: shapes only, no data)
    _, n_meta = tasks.rotate(x.to("meta"), y.to("meta"), tasks.batch_generator(3, 17))
    assert n_meta.device.type == "meta" and n_meta.shape == expected.shape
