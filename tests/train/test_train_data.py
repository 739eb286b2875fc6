"""Dataset loading: Kermany folders (2 and 3 classes), validation carving, MedMNIST .npz, PNG /
JPEG / DICOM files through the shared decoder, unreadable files skipped and listed, clear errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from cxr.client.imaging import load_model_input
from cxr.train.data import (
    DatasetError,
    detect_format,
    fingerprint,
    load_split,
    load_training_data,
    stratified_split,
)


def test_kermany_two_classes_use_the_dataset_val(make_folders) -> None:
    root = make_folders(
        {"train": {"NORMAL": 10, "PNEUMONIA": 15}, "val": {"NORMAL": 3, "PNEUMONIA": 3}}
    )
    data = load_training_data(root, 24)
    assert data.train.classes == ["NORMAL", "PNEUMONIA"]
    assert data.train.class_counts() == {"NORMAL": 10, "PNEUMONIA": 15}
    assert data.val.class_counts() == {"NORMAL": 3, "PNEUMONIA": 3}
    assert data.val_source == "val split of the dataset"
    assert data.train.images.shape == (25, 1, 24, 24) and data.train.images.dtype == np.uint8
    first = Path(data.train.sources[0])
    assert np.array_equal(data.train.images[0], load_model_input(first.read_bytes(), 24))


def test_kermany_three_classes_put_normal_first(make_folders) -> None:
    root = make_folders(
        {"train": {"VIRUS": 4, "NORMAL": 5, "BACTERIA": 6}, "test": {"NORMAL": 1, "VIRUS": 2}}
    )
    train = load_split(root, "train", 16)
    assert train.classes == ["NORMAL", "BACTERIA", "VIRUS"]
    assert train.class_counts() == {"NORMAL": 5, "BACTERIA": 6, "VIRUS": 4}
    test = load_split(root, "test", 16)  # a split may lack a class; labels follow train's order
    assert test.classes == train.classes
    assert sorted(test.labels.tolist()) == [0, 2, 2]


@pytest.mark.parametrize(
    ("val", "reason"),
    [
        (None, "missing"),
        ({"NORMAL": 1, "PNEUMONIA": 1}, "only 2 images"),
        ({"PNEUMONIA": 8}, "no NORMAL images"),
    ],
)
def test_validation_is_carved_from_train_when_missing_or_tiny(make_folders, val, reason) -> None:
    layout = {"train": {"NORMAL": 20, "PNEUMONIA": 40}}
    if val:
        layout["val"] = val
    data = load_training_data(make_folders(layout), 16, seed=3)
    assert data.val_source.startswith("carved from train: stratified 10%, seed 3")
    assert reason in data.val_source
    assert data.val.class_counts() == {"NORMAL": 2, "PNEUMONIA": 4}
    assert data.train.class_counts() == {"NORMAL": 18, "PNEUMONIA": 36}
    assert not set(data.train.sources) & set(data.val.sources)
    again = load_training_data(make_folders(layout, name="again"), 16, seed=3)
    assert [Path(s).name for s in again.val.sources] == [Path(s).name for s in data.val.sources]


def test_stratified_split_keeps_every_class() -> None:
    labels = np.array([0] * 5 + [1] * 50 + [2] * 3)
    keep, held = stratified_split(labels, 0.1, seed=0)
    assert np.bincount(labels[held]).tolist() == [1, 5, 1]
    assert sorted([*keep, *held]) == list(range(len(labels)))


def test_npz_splits(make_npz) -> None:
    path = make_npz({"train": [0, 1, 1, 0, 1], "val": [1, 0]})
    assert detect_format(path) == "npz"
    train = load_split(path, "train", 32)
    assert train.classes == ["NORMAL", "PNEUMONIA"]
    assert train.labels.tolist() == [0, 1, 1, 0, 1]
    assert train.images.shape == (5, 1, 32, 32) and train.images.dtype == np.uint8
    assert train.sources[2] == "npz:train:2"
    with np.load(path) as archive:  # the same resize the client and server apply
        assert np.array_equal(
            train.images[1][0], np.asarray(_resize(archive["train_images"][1], 32))
        )


def test_npz_with_more_classes_names_them(make_npz) -> None:
    path = make_npz({"train": [0, 1, 2, 2], "test": [0, 1]})
    assert load_split(path, "test", 16).classes == ["NORMAL", "CLASS_1", "CLASS_2"]


def test_npz_val_carved_when_missing(make_npz) -> None:
    data = load_training_data(make_npz({"train": [0] * 10 + [1] * 20}), 16)
    assert "dataset val missing" in data.val_source
    assert data.val.class_counts() == {"NORMAL": 1, "PNEUMONIA": 2}


def test_image_files_png_jpeg_dicom_use_the_shared_decoder(tmp_path: Path, samples_dir) -> None:
    from PIL import Image

    normal = tmp_path / "ds" / "train" / "NORMAL"
    sick = tmp_path / "ds" / "train" / "PNEUMONIA"
    normal.mkdir(parents=True)
    sick.mkdir(parents=True)
    shutil.copy(samples_dir / "cxr_pa_monochrome2.dcm", normal / "mono2.dcm")
    shutil.copy(samples_dir / "cxr_pa_monochrome1_tag.dcm", sick / "mono1")  # no extension
    shutil.copy(samples_dir / "nih_00000001_000.png", normal / "nih.png")
    Image.open(samples_dir / "nih_00027426_000.png").convert("RGB").save(sick / "nih.jpg")
    _write_dicom_12bit(sick / "ramp.dcm")
    split = load_split(tmp_path / "ds", "train", 32)
    assert split.skipped == []
    names = [Path(s).name for s in split.sources]
    assert names == ["mono2.dcm", "nih.png", "mono1", "nih.jpg", "ramp.dcm"]
    assert split.labels.tolist() == [0, 0, 1, 1, 1]
    for image, source in zip(split.images, split.sources, strict=True):
        assert np.array_equal(image, load_model_input(Path(source).read_bytes(), 32))
    mono2, mono1 = split.images[0].astype(int), split.images[2].astype(int)
    assert np.abs(mono1 + mono2 - 255).max() <= 1  # MONOCHROME1 is shown inverted
    ramp = split.images[4][0].astype(int)
    assert (ramp[:, :10] == 255).all() and (ramp[:, 22:] == 0).all()  # window saturates
    assert (np.diff(ramp[:, 10:22], axis=1) <= 0).all()  # inverted (MONOCHROME1) ramp


def test_unreadable_files_are_skipped_and_listed(make_folders) -> None:
    root = make_folders({"train": {"NORMAL": 20, "PNEUMONIA": 20}})
    folder = root / "train" / "PNEUMONIA"
    (folder / "garbage.png").write_bytes(b"this is not an image")
    good = (folder / "pneumonia_000.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "empty.dcm").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image suffix: ignored")
    (folder / ".DS_Store").write_bytes(b"\0\0")
    (root / "train" / ".hidden").mkdir()
    data = load_training_data(root, 16)
    skipped = sorted(data.train.skipped)
    assert [entry.split(":")[0] for entry in skipped] == [
        str(folder / name) for name in ("empty.dcm", "garbage.png", "truncated.png")
    ]
    assert "empty" in skipped[0] and "not a PNG, JPEG or DICOM" in skipped[1]
    assert len(data.train) + len(data.val) == 40  # the readable files all made it


def test_fingerprint_depends_on_pixels_and_labels(make_npz) -> None:
    split = load_split(make_npz({"train": [0, 1, 1]}), "train", 16)
    same = load_split(make_npz({"train": [0, 1, 1]}, name="copy.npz"), "train", 16)
    assert fingerprint(split) == fingerprint(same)
    relabelled = split.subset(np.arange(3))
    relabelled.labels = np.array([1, 1, 1])
    assert fingerprint(relabelled) != fingerprint(split)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda root: root / "absent", "dataset not found"),
        (lambda root: _file(root / "x.csv", b"a,b"), "not a dataset"),
        (lambda root: _dir(root / "empty"), "not a Kermany-style folder"),
        (lambda root: _file(root / "broken.npz", b"PK\x03\x04 broken"), "unreadable .npz"),
    ],
)
def test_unusable_paths_are_named(tmp_path: Path, build, message: str) -> None:
    path = build(tmp_path)
    with pytest.raises(DatasetError, match=message) as caught:
        load_training_data(path, 16)
    assert str(path) in str(caught.value)


def test_folder_errors_are_specific(make_folders) -> None:
    one_class = make_folders({"train": {"PNEUMONIA": 3}}, name="one")
    with pytest.raises(DatasetError, match="at least 2"):
        load_split(one_class, "train", 16)
    no_normal = make_folders({"train": {"COVID": 2, "HEALTHY": 2}}, name="nonormal")
    with pytest.raises(DatasetError, match="needs a NORMAL class folder"):
        load_split(no_normal, "train", 16)
    unknown = make_folders(
        {"train": {"NORMAL": 2, "PNEUMONIA": 2}, "val": {"NORMAL": 1, "COVID": 1}}, name="unk"
    )
    with pytest.raises(DatasetError, match=r"\['COVID'\] are not in train's classes"):
        load_training_data(unknown, 16)
    with pytest.raises(DatasetError, match="no 'test' split"):
        load_split(unknown, "test", 16)


def test_npz_errors_are_specific(make_npz, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"no 'test' split.*splits present: train, val"):
        load_split(make_npz({"train": [0, 1], "val": [1, 0]}), "test", 16)
    floats = tmp_path / "floats.npz"
    np.savez(floats, train_images=np.zeros((2, 8, 8), np.float32), train_labels=np.zeros((2, 1)))
    with pytest.raises(DatasetError, match="must be uint8"):
        load_split(floats, "train", 16)
    negative = tmp_path / "negative.npz"
    np.savez(negative, train_images=np.zeros((2, 8, 8), np.uint8), train_labels=[[-1], [0]])
    with pytest.raises(DatasetError, match="non-negative integer class indices"):
        load_split(negative, "train", 16)
    single = make_npz({"train": [1, 1, 1]}, name="single.npz")
    with pytest.raises(DatasetError, match="only one class"):
        load_training_data(single, 16)


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))


def _file(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def _dir(path: Path) -> Path:
    path.mkdir()
    return path


def _write_dicom_12bit(path: Path) -> None:
    """A 12-bit MONOCHROME1 ramp with rescale slope/intercept and a window that clips it."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = 64, 64
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.RescaleSlope, ds.RescaleIntercept = 2, -100  # stored v -> 2v - 100
    ds.WindowCenter, ds.WindowWidth = 4000, 2000  # shows 2v - 100 in [3000, 5000]
    ramp = np.tile(np.arange(64, dtype=np.uint16) * 64, (64, 1))  # 0 .. 4032 left to right
    ds.PixelData = ramp.tobytes()
    ds.save_as(path, enforce_file_format=True)
