"""FeatureExtractor: the evaluation features, from any kind of image input."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from metareid import FeatureExtractor
from metareid.data import BadImageError, build_test_loader, build_test_transform, load_image
from metareid.evaluation import extract_features
from metareid.inference import EmbeddingNet, Extraction, list_images
from metareid.models import build_model


@pytest.fixture(scope="module")
def extractor(checkpoint):
    return FeatureExtractor(checkpoint, device="cpu", batch_size=8)


@pytest.fixture
def folder(tiny_run, tmp_path):
    """Six target images copied into a folder tree (Market names)."""
    root = tmp_path / "crops"
    (root / "sub").mkdir(parents=True)
    for i, rec in enumerate(tiny_run.target.query[:6]):
        dst = root / ("sub" if i % 2 else "") / rec.path.split("/")[-1]
        shutil.copy(rec.path, dst)
    return root


def test_features_equal_the_trainers_evaluation_features(tiny_run, extractor):
    records = tiny_run.target.gallery
    expected, _, _ = tiny_run.features(records)
    got = extractor([r.path for r in records])
    assert got.shape == expected.shape == (len(records), extractor.feat_dim)
    assert torch.equal(got, expected)
    assert torch.allclose(got.norm(dim=1), torch.ones(len(records)))


def test_flip_equals_extract_features_with_flip(tiny_run, checkpoint):
    records = tiny_run.target.query
    loader = build_test_loader(records, build_test_transform((32, 16)), batch_size=8, num_workers=0)
    expected, _, _ = extract_features(tiny_run.model, loader, "cpu", flip=True)
    flipped = FeatureExtractor(checkpoint, device="cpu", batch_size=8, flip=True)
    assert torch.equal(flipped([r.path for r in records]), expected)


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("normalize_neck", [True, False])
@pytest.mark.parametrize("neck", ["metabn", "batchnorm"])
def test_embedding_net_equals_extract_features_bit_for_bit(flip, normalize_neck, neck):
    torch.manual_seed(0)
    model = build_model("resnet10", normalize_neck=normalize_neck)
    if neck == "batchnorm":  # the Table 3 ablations' plain neck
        model.neck = model.neck.to_batchnorm()  # type: ignore[assignment]
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        model(torch.randn(8, 3, 32, 16, generator=gen))  # move the running statistics
    model.eval()
    batches = [torch.randn(n, 3, 32, 16, generator=gen) for n in (3, 5)]
    loader = [(images, list(range(len(images))), [0] * len(images)) for images in batches]
    expected, _, _ = extract_features(model, loader, "cpu", flip=flip)
    net = EmbeddingNet(model, flip=flip).eval()
    with torch.no_grad():
        got = torch.cat([net(images) for images in batches])
    assert torch.equal(got, expected)
    assert type(net.model.neck) is torch.nn.BatchNorm1d
    assert net.model.backbone is model.backbone and net.model.classifier is None
    assert (net.model.neck is model.neck) == (neck == "batchnorm")  # a MetaBN is copied
    assert net.model.normalize_neck is normalize_neck


def test_every_input_kind_is_preprocessed_like_evaluation(tiny_run, extractor):
    path = tiny_run.target.query[0].path
    pil = load_image(path)
    array = np.array(pil)  # (H, W, 3) uint8
    tensor = torch.from_numpy(array).permute(2, 0, 1)  # (3, H, W) uint8
    expected = extractor.embed(build_test_transform((32, 16))(pil)[None])
    for item in (path, pil, pil.convert("L"), array, tensor, [array], tensor[None], array[None]):
        got = extractor(item)
        assert got.shape == (1, extractor.feat_dim)
        if not (isinstance(item, Image.Image) and item.mode == "L"):
            assert torch.equal(got, expected), type(item)
    mixed = extractor([path, tensor, array[None].repeat(2, 0)])  # batch-size rounding only
    assert mixed.shape[0] == 4 and torch.allclose(mixed, expected.repeat(4, 1), atol=1e-6)
    # float input (RGB in [0, 1]) goes through the same transform on the tensor
    floats = tensor.float() / 255
    direct = extractor.embed(build_test_transform((32, 16))(floats)[None])
    assert torch.equal(extractor(floats), direct)
    assert torch.equal(extractor(floats.permute(1, 2, 0).numpy()), direct)
    assert (extractor(floats) - expected).abs().max() < 0.05  # close to the uint8 path


def test_model_inputs_are_exactly_the_evaluation_transform(tiny_run, extractor, monkeypatch):
    seen = []
    monkeypatch.setattr(extractor, "embed", lambda batch: seen.append(batch) or batch[:, :1, 0, 0])
    records = tiny_run.target.query[:5]
    extractor([r.path for r in records])
    transform = build_test_transform((32, 16))
    expected = torch.stack([transform(load_image(r.path)) for r in records])
    assert torch.equal(torch.cat(seen), expected)
    pil = load_image(records[0].path).resize((11, 29))  # another size, another mode
    seen.clear()
    extractor([pil.convert("RGBA"), np.array(pil)])
    assert torch.equal(seen[0][0], transform(pil)) and torch.equal(seen[0][1], transform(pil))


def test_any_image_size_is_resized_as_in_evaluation(extractor):
    sizes = [(1, 1), (7, 300), (500, 20), (32, 16)]
    images = [Image.new("RGB", (w, h), (i * 40, 90, 200)) for i, (h, w) in enumerate(sizes)]
    feats = extractor(images)
    assert feats.shape == (4, extractor.feat_dim) and torch.isfinite(feats).all()


def test_batching_does_not_change_the_features(checkpoint, extractor, tiny_run):
    paths = [r.path for r in tiny_run.target.gallery]
    one = FeatureExtractor(checkpoint, device="cpu", batch_size=3, progress=True)
    assert torch.allclose(one(paths), extractor(paths), atol=1e-6)


def test_extract_folder_and_names(folder, extractor):
    feats, paths = extractor.extract_folder(folder)
    assert feats.shape[0] == 6 == len(paths)
    assert [p.relative_to(folder).as_posix() for p in paths] == sorted(
        p.relative_to(folder).as_posix() for p in folder.rglob("*.jpg")
    )
    top, _ = extractor.extract_folder(folder, recursive=False)
    assert top.shape[0] == 3


def test_empty_and_missing_folders(tmp_path, extractor):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"holds no image file"):
        extractor.extract_folder(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist or is not a folder"):
        list_images(tmp_path / "nope")
    with pytest.raises(ValueError, match="at least one image"):
        extractor([])


def test_unreadable_images_raise_or_are_skipped(folder, checkpoint, extractor):
    bad = folder / "0001_c1s1_broken.jpg"
    bad.write_bytes(b"not a jpeg")
    files = list_images(folder)
    with pytest.raises(BadImageError, match=r"0001_c1s1_broken\.jpg"):
        extractor(files)
    skipping = FeatureExtractor(checkpoint, device="cpu", batch_size=4, on_bad_image="skip")
    with pytest.warns(UserWarning, match=r"0001_c1s1_broken.jpg.*skipped"):
        out = skipping.extract(files)
    assert isinstance(out, Extraction)
    assert bad not in [files[i] for i in out.kept.tolist()]
    assert out.features.shape[0] == len(files) - 1
    good = [f for f in files if f != bad]
    assert torch.allclose(out.features, extractor(good), atol=1e-6)
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="all skipped"):
        skipping([bad])


def test_bad_in_memory_images(extractor):
    cases = [
        (torch.zeros(4, 8, 8, dtype=torch.uint8), ValueError, r"images\[0\] must be one RGB"),
        (np.zeros((8, 8), np.uint8), ValueError, r"shape \(H, W, 3\)"),
        (np.zeros((8, 8, 3), np.int32), TypeError, "uint8 .* or floating point"),
        (torch.full((3, 4, 4), float("nan")), ValueError, "NaN or infinite"),
        (torch.zeros(3, 0, 4), ValueError, "one RGB image"),
        (42, TypeError, "must be an image path"),
        ([np.zeros((4, 4, 3), np.uint8), 1.5], TypeError, r"images\[1\]"),
    ]
    for value, error, message in cases:
        with pytest.raises(error, match=message):
            extractor(value)
    with pytest.raises(ValueError, match=r"batch must be a float tensor of shape \(N, 3, 32, 16\)"):
        extractor.embed(torch.zeros(1, 3, 8, 8))


def test_bad_arguments_are_refused_before_loading(tmp_path):
    missing = tmp_path / "never-read.pt"  # the checks run first: no FileNotFoundError
    for kwargs, error, message in [
        ({"batch_size": 0}, ValueError, "batch_size must be an int >= 1"),
        ({"num_workers": -1}, ValueError, "num_workers must be an int >= 0"),
        ({"flip": "yes"}, TypeError, "flip must be a bool"),
        ({"amp": 1}, TypeError, "amp must be a bool"),
        ({"progress": "auto"}, TypeError, "progress must be a bool or None"),
        ({"on_bad_image": "ignore"}, ValueError, "on_bad_image must be one of"),
        ({"device": "toaster"}, ValueError, "device must name a torch device"),
    ]:
        with pytest.raises(error, match=message):
            FeatureExtractor(missing, **kwargs)
    with pytest.raises(FileNotFoundError):
        FeatureExtractor(missing)


def test_model_is_the_restored_reid_model_in_eval_mode(tiny_run, extractor):
    """docs/inference.md: ``extractor.model`` is the restored ``ReIDModel`` in eval mode."""
    from metareid.models import ReIDModel

    assert isinstance(extractor.model, ReIDModel) and not extractor.model.training
    assert all(not m.training for m in extractor.model.modules())
    trained = tiny_run.model.state_dict()
    state = extractor.model.state_dict()
    assert state.keys() == trained.keys()
    assert all(torch.equal(v.cpu(), trained[k].cpu()) for k, v in state.items())


def test_metadata_and_repr(extractor):
    meta = extractor.metadata()
    assert meta["input"]["height"] == 32 and meta["input"]["width"] == 16
    assert meta["input"]["mean"] == [0.485, 0.456, 0.406]
    assert meta["output"]["dim"] == extractor.feat_dim and meta["epoch"] == 1
    assert "resnet10" in repr(extractor)


@pytest.mark.slow
def test_worker_processes_give_the_same_features(folder, checkpoint, extractor):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        workers = FeatureExtractor(checkpoint, device="cpu", batch_size=2, num_workers=2)
        feats, _ = workers.extract_folder(folder)
    assert torch.allclose(feats, extractor.extract_folder(folder)[0], atol=1e-6)
