"""Dataset readers: OSCD, AirChange and A/B/label folders on the real data; CSV/YAML lists on synthetic rasters."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine

from changedet.data import (
    OSCD_BANDS,
    OSCD_RGB,
    Scene,
    list_airchange_pairs,
    list_folder_pairs,
    list_oscd_cities,
    load_dataset,
    read_airchange,
    read_folders,
    read_list,
    read_oscd,
)
from changedet.data.airchange import DAUDT_TEST_CROP
from changedet.errors import InputError
from changedet.testing import make_geotiff
from tests.conftest import AIRCHANGE, DSIFN, LEVIR, OSCD_IMAGES, SHARED_DATA

OSCD = SHARED_DATA / "oscd"


def _b02(city: str, date: str = "imgs_1"):
    return next((OSCD_IMAGES / city / date).glob("*_B02.tif"))


@pytest.mark.realdata
def test_oscd_lists_labelled_cities_from_disk() -> None:
    labelled = list_oscd_cities(OSCD)
    everything = list_oscd_cities(OSCD, labelled=False)
    assert set(labelled) < set(everything)
    assert "beirut" in labelled and "abudhabi" in labelled
    for city in labelled:  # each listed city really has a label file
        assert (OSCD / "Onera Satellite Change Detection dataset - Train Labels" / city / "cm" / f"{city}-cm.tif").is_file()
    for city in set(everything) - set(labelled):
        with pytest.raises(InputError, match="no label"):
            read_oscd(OSCD, city, bands=OSCD_RGB)


@pytest.mark.realdata
def test_oscd_abudhabi_second_date_resampled_to_first_grid() -> None:
    scene = read_oscd(OSCD, "abudhabi")
    with rasterio.open(_b02("abudhabi")) as ref, rasterio.open(_b02("abudhabi", "imgs_2")) as other:
        assert (other.width, other.height) == (782, 795)  # the raw second date is smaller
        assert scene.shape == (ref.height, ref.width) == (799, 785)
        assert scene.crs == ref.crs
        assert scene.transform.almost_equals(ref.transform)
        raw_b02 = ref.read(1).astype(np.float32)
    assert scene.before.shape == scene.after.shape == (13, 799, 785)
    assert scene.band_names == list(OSCD_BANDS)
    assert scene.pixel_size == 10.0
    # 10 m bands of the first date are read unchanged
    np.testing.assert_array_equal(scene.before[OSCD_BANDS.index("B02")], raw_b02)
    assert np.isfinite(scene.after).all() and scene.valid.all()
    assert set(np.unique(scene.label)) == {0, 1}
    assert scene.meta["before_date"] == "2016-01-20" and scene.meta["after_date"] == "2018-03-28"


@pytest.mark.realdata
@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")  # OSCD label files: no transform
@pytest.mark.parametrize("city", ["beirut", "saclay_e", "bercy"])
def test_oscd_city_shapes_labels_and_georeferencing(city: str) -> None:
    scene = read_oscd(OSCD, city, bands=OSCD_RGB)
    with rasterio.open(_b02(city)) as ref:
        assert scene.shape == (ref.height, ref.width)
        assert scene.transform == ref.transform and scene.crs == ref.crs
        b02 = ref.read(1)
    assert scene.band_names == ["B04", "B03", "B02"]
    np.testing.assert_array_equal(scene.before[2], b02.astype(np.float32))
    label_file = OSCD / "Onera Satellite Change Detection dataset - Train Labels" / city / "cm" / f"{city}-cm.tif"
    with rasterio.open(label_file) as lf:
        raw = lf.read(1)
    assert set(np.unique(raw)) <= {1, 2}
    np.testing.assert_array_equal(scene.label, (raw == 2).astype(np.uint8))
    assert 0.0 < scene.change_fraction < 0.1


@pytest.mark.realdata
def test_oscd_band_selection_and_unknown_band() -> None:
    full = read_oscd(OSCD, "bercy")
    rgb = read_oscd(OSCD, "bercy", bands=("b04", "B03", "B02"))
    np.testing.assert_array_equal(rgb.after, full.select_bands(OSCD_RGB).after)
    with pytest.raises(InputError, match="B13"):
        read_oscd(OSCD, "bercy", bands=("B13",))
    with pytest.raises(InputError, match="cities on disk"):
        read_oscd(OSCD, "atlantis")


@pytest.mark.realdata
def test_airchange_pairs_and_shapes() -> None:
    pairs = list_airchange_pairs(AIRCHANGE)
    assert "Szada/2" in pairs and "Tiszadob/4" in pairs and "Archieve" in pairs
    assert "Szada/1" not in pairs  # withheld test pair
    scene = read_airchange(AIRCHANGE, "Szada/5")  # its im2 is spelled im2.BMP
    assert scene.shape == (640, 952)
    assert scene.before.shape == (3, 640, 952)
    assert set(np.unique(scene.label)) == {0, 1}
    assert scene.crs is None and scene.pixel_size == 1.5
    assert scene.change_fraction == pytest.approx(0.0309, abs=1e-3)  # PROVENANCE: 3.09 %
    odd = read_airchange(AIRCHANGE, "Szada/6")  # its gt holds one stray grey pixel
    assert set(np.unique(odd.label)) == {0, 1}
    crop = read_airchange(AIRCHANGE, "Szada/2", crop=DAUDT_TEST_CROP)
    assert crop.shape == (448, 784)
    with pytest.raises(InputError, match="AirChange pairs on disk"):
        read_airchange(AIRCHANGE, "Szada/1")


@pytest.mark.realdata
@pytest.mark.parametrize("root", [LEVIR, DSIFN])
def test_ab_label_folders(root) -> None:
    names = list_folder_pairs(root)
    scenes = read_folders(root)
    assert [s.name for s in scenes] == names
    assert all(s.shape == (256, 256) and s.count == 3 for s in scenes)
    assert all(set(np.unique(s.label)) <= {0, 1} for s in scenes)
    assert any(s.label.any() for s in scenes)
    demo = read_folders(root, split="demo")
    listed = [line.strip().rsplit(".", 1)[0] for line in (root / "list" / "demo.txt").read_text().split() if line]
    assert [s.name for s in demo] == listed
    with pytest.raises(InputError, match="lists present: demo"):
        read_folders(root, split="train")


@pytest.mark.realdata
def test_load_dataset_oscd_split() -> None:
    split = load_dataset({"type": "oscd", "root": str(OSCD), "val_cities": ["bercy"], "cities": ["paris"],
                          "bands": ["B04", "B03", "B02"]})
    assert [s.name for s in split.train] == ["paris"] and [s.name for s in split.val] == ["bercy"]
    with pytest.raises(InputError, match="both"):
        load_dataset({"type": "oscd", "root": str(OSCD), "val_cities": ["bercy"], "cities": ["bercy"]})


def _write_triplet(folder, name, *, shift_after=False, label_values=(0, 255)):
    rng = np.random.default_rng(len(name))
    before = rng.integers(0, 1000, (2, 16, 16)).astype(np.uint16)
    after = before.copy()
    label = np.full((16, 16), label_values[0], np.uint8)
    label[4:8, 4:8] = label_values[1]
    make_geotiff(folder / f"{name}_before.tif", before, descriptions=["red", "nir"])
    origin = (500000.0 + (20.0 if shift_after else 0.0), 5700000.0)
    make_geotiff(folder / f"{name}_after.tif", after, origin=origin, descriptions=["red", "nir"])
    make_geotiff(folder / f"{name}_cm.tif", label)
    return before, label


def test_read_list_csv_and_yaml(tmp_path) -> None:
    before, label = _write_triplet(tmp_path / "a", "s1")
    _write_triplet(tmp_path / "a", "s2", shift_after=True)
    (tmp_path / "pairs.csv").write_text(
        "name,before,after,label\n"
        "s1,a/s1_before.tif,a/s1_after.tif,a/s1_cm.tif\n"
        "s2,a/s2_before.tif,a/s2_after.tif,a/s2_cm.tif\n"
    )
    scenes = read_list(tmp_path / "pairs.csv")
    assert [s.name for s in scenes] == ["s1", "s2"]
    s1, s2 = scenes
    assert s1.band_names == ["red", "nir"] and s1.pixel_size == pytest.approx(10.0)
    np.testing.assert_array_equal(s1.before, before.astype(np.float32))
    np.testing.assert_array_equal(s1.label, (label == 255).astype(np.uint8))
    assert s1.valid.all()
    # s2 AFTER starts 2 pixels east: resampled onto the BEFORE grid, the 2 uncovered west columns are invalid
    assert not s2.valid[:, :2].any() and s2.valid[:, 2:].all()
    (tmp_path / "pairs.yaml").write_text(
        "pairs:\n  - {name: only, before: a/s1_before.tif, after: a/s1_after.tif, label: a/s1_cm.tif}\n"
    )
    (only,) = read_list(tmp_path / "pairs.yaml", bands=["nir"])
    assert only.band_names == ["nir"] and only.count == 1
    split = load_dataset({"type": "list", "path": "pairs.csv", "val_names": ["s2"]}, base=tmp_path)
    assert [s.name for s in split.train] == ["s1"] and [s.name for s in split.val] == ["s2"]


def test_a_csv_list_from_excel_with_bom_and_spaces(tmp_path) -> None:
    _write_triplet(tmp_path, "s1")
    text = "Name, Before, After, Label\ns1, s1_before.tif, s1_after.tif, s1_cm.tif\n"
    (tmp_path / "excel.csv").write_text(text, encoding="utf-8-sig")
    (scene,) = read_list(tmp_path / "excel.csv")
    assert scene.name == "s1" and scene.label.sum() == 16


def test_list_errors_name_the_problem(tmp_path) -> None:
    (tmp_path / "bad.csv").write_text("name,before\nx,a.tif\n")
    with pytest.raises(InputError, match="row 1 lacks after"):
        read_list(tmp_path / "bad.csv")
    with pytest.raises(InputError, match="unknown list format"):
        read_list(_touch(tmp_path / "pairs.txt"))
    _write_triplet(tmp_path, "s3", label_values=(3, 7))
    (tmp_path / "odd.csv").write_text("before,after,label\ns3_before.tif,s3_after.tif,s3_cm.tif\n")
    with pytest.raises(InputError, match=r"label values \{3, 7\}"):
        read_list(tmp_path / "odd.csv")
    (scene,) = read_list(tmp_path / "odd.csv", change_values=[7])
    assert scene.label.sum() == 16
    (tmp_path / "twice.csv").write_text("name,before,after\ns,s3_before.tif,s3_after.tif\ns,s3_before.tif,s3_after.tif\n")
    with pytest.raises(InputError, match="several rows are named s; give each row its own name"):
        read_list(tmp_path / "twice.csv")
    with pytest.raises(InputError, match="unknown dataset type"):
        load_dataset({"type": "nope"})
    with pytest.raises(InputError, match="unknown key"):
        load_dataset({"type": "oscd", "root": "x", "city": ["a"]})


def test_names_that_yaml_read_as_numbers_get_a_hint_to_quote_them(tmp_path) -> None:
    import yaml

    for name in ("4_4", "5_3", "0_2"):  # DSIFN's sample names
        _write_triplet(tmp_path, name)
    (tmp_path / "scenes.csv").write_text("name,before,after,label\n" + "".join(
        f"{n},{n}_before.tif,{n}_after.tif,{n}_cm.tif\n" for n in ("4_4", "5_3", "0_2")))
    spec = yaml.safe_load("{type: list, path: scenes.csv, val_names: [4_4, 5_3]}")
    assert spec["val_names"] == [44, 53]  # what YAML makes of them
    with pytest.raises(InputError, match=r"scenes\.csv: no rows named 44, 53.*44, 53 were read by YAML as numbers: "
                                         r"YAML reads unquoted digits joined by underscores as one integer "
                                         r"\(4_4 becomes 44\); quote the scene names, e\.g\. val_names: \['4_4'\]"):
        load_dataset(spec, base=tmp_path)
    folders = tmp_path / "f"
    for sub in ("A", "B", "label"):
        (folders / sub).mkdir(parents=True)
    _write_triplet(folders, "x")
    for sub, kind in (("A", "before"), ("B", "after"), ("label", "cm")):
        (folders / f"x_{kind}.tif").rename(folders / sub / "4_4.tif")
    with pytest.raises(InputError, match=r"no pair named 44\. 44 was read by YAML as a number"):
        load_dataset({"type": "folders", "root": str(folders), "val_names": [44]})
    quoted = load_dataset(yaml.safe_load("{type: list, path: scenes.csv, val_names: ['4_4', '5_3']}"), base=tmp_path)
    assert [s.name for s in quoted.val] == ["4_4", "5_3"]
    with pytest.raises(InputError, match=r"no rows named nope for validation$"):  # no hint for names that were text
        load_dataset({"type": "list", "path": "scenes.csv", "val_names": ["nope"]}, base=tmp_path)


def test_a_missing_raster_of_a_list_names_the_list_the_row_and_where_paths_start(tmp_path, monkeypatch) -> None:
    from changedet.errors import RasterReadError

    _write_triplet(tmp_path, "a")  # beside the current folder, not the list's
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "mine.csv").write_text(
        "name,before,after,label\nb,../a_before.tif,../a_after.tif,../a_cm.tif\nc,../a_before.tif,../a_after.tif,a_cm.tif\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RasterReadError, match=r"lists/mine\.csv, row 2 \(c\): label a_cm\.tif: no such file \(looked for "
                                              r"lists/a_cm\.tif\); relative paths in a list start at the list's "
                                              r"folder \(.*lists\), not the current one: a_cm\.tif exists relative to "
                                              r"the current folder, so write \.\./a_cm\.tif or an absolute path"):
        read_list("lists/mine.csv")
    assert [s.name for s in read_list("lists/mine.csv", names=["b"], change_values=[255])] == ["b"]  # row 2 not read
    with pytest.raises(RasterReadError, match=r"row 2 \(c\): label a_cm\.tif: no such file"):
        read_list("lists/mine.csv", names=["b"])  # the OSCD label scan reads every row's label


def _touch(path):
    path.write_text("")
    return path


def test_scene_validates_shapes_and_crops() -> None:
    arr = np.zeros((2, 8, 8), np.float32)
    with pytest.raises(InputError, match="band names"):
        Scene("x", arr, arr, None, np.ones((8, 8), bool), None, Affine.identity(), ["a"], None)
    scene = Scene("x", arr, arr, np.zeros((8, 8), np.uint8), np.ones((8, 8), bool), None,
                  Affine(10, 0, 100, 0, -10, 200), ["a", "b"], 10.0)
    crop = scene.crop(2, 3, 4, 5)
    assert crop.shape == (4, 5)
    assert (crop.transform.c, crop.transform.f) == (130.0, 180.0)


def test_an_all_ones_oscd_label_beside_1_2_labels_is_no_change(tmp_path) -> None:
    # OSCD labels are 1 (no change) / 2 (change); a scene without change holds only 1s, which on its own reads as
    # 0/1 and so all change: beside 1/2 labels in the same list it is read as they are
    _write_triplet(tmp_path, "s1", label_values=(1, 2))
    _write_triplet(tmp_path, "nc", label_values=(1, 1))
    _write_triplet(tmp_path, "z", label_values=(0, 1))  # a 0/1 label with both values keeps its own reading
    (tmp_path / "pairs.csv").write_text(
        "name,before,after,label\ns1,s1_before.tif,s1_after.tif,s1_cm.tif\nnc,nc_before.tif,nc_after.tif,nc_cm.tif\n"
        "z,z_before.tif,z_after.tif,z_cm.tif\n"
    )
    with pytest.warns(UserWarning, match=r"nc_cm.tif: only 1s, beside OSCD labels"):
        s1, nc, z = read_list(tmp_path / "pairs.csv")
    assert s1.label.sum() == 16 and nc.label.sum() == 0 and nc.valid.all()
    assert z.label.sum() == 16 and z.valid.all()
    with pytest.warns(UserWarning, match="only 1s"):  # a validation subset alone is read the same way
        (only,) = read_list(tmp_path / "pairs.csv", names=["nc"])
    assert only.label.sum() == 0
    (nc_alone,) = read_list(tmp_path / "pairs.csv", names=["nc"], change_values=[1])  # said otherwise
    assert nc_alone.label.all()
    # without any 1/2 label, an all-ones label stays all change (0/1)
    (tmp_path / "alone.csv").write_text("name,before,after,label\nnc,nc_before.tif,nc_after.tif,nc_cm.tif\n")
    assert read_list(tmp_path / "alone.csv")[0].label.all()


def _folder_dataset(root, labels: dict, *, rgb: bool = False):
    for d in ("A", "B", "label"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for name, lab in labels.items():
        img = np.random.default_rng(0).integers(0, 255, (3, 16, 16)).astype(np.uint8)
        make_geotiff(root / "A" / f"{name}.tif", img, crs=None)
        make_geotiff(root / "B" / f"{name}.tif", img, crs=None)
        make_geotiff(root / "label" / f"{name}.tif", lab, crs=None)


def test_folders_colour_labels_change_values_and_odd_files(tmp_path) -> None:

    green = np.zeros((3, 16, 16), np.uint8)
    green[1, 2:6, 2:6] = 255  # change painted green on black: band 1 alone holds none of it
    grey = np.full((16, 16), 10, np.uint8)
    grey[0:4, 0:4] = 240  # a JPEG-like label: no 0/1, 0/255 or 1/2 values
    _folder_dataset(tmp_path / "c", {"p1": green})
    (scene,) = read_folders(tmp_path / "c")
    assert scene.label.sum() == 16 and scene.label[2:6, 2:6].all()
    _folder_dataset(tmp_path / "j", {"p1": grey})
    with pytest.raises(InputError, match="change_values"):
        read_folders(tmp_path / "j")
    split = load_dataset({"type": "folders", "root": "j", "change_values": [240]}, base=tmp_path)
    assert split.train[0].label.sum() == 16
    # hidden files are skipped; files without a partner are named in a warning; two images of one name: error
    (tmp_path / "c" / "A" / "._p1.tif").write_bytes(b"\x00\x05\x16\x07")
    make_geotiff(tmp_path / "c" / "B" / "p2.tif", green, crs=None)
    with pytest.warns(UserWarning, match=r"1 file\(s\) left out.*B/p2.tif"):
        assert list_folder_pairs(tmp_path / "c") == ["p1"]
    make_geotiff(tmp_path / "c" / "A" / "p1.png", green[0], crs=None)
    with pytest.raises(InputError, match=r"p1.png and p1.tif are both pair 'p1'"):
        list_folder_pairs(tmp_path / "c")


def test_pixel_aligned_after_without_georeferencing_is_accepted(tmp_path) -> None:
    from changedet.data.generic import read_pair_files

    img = np.random.default_rng(1).integers(0, 1000, (2, 16, 16)).astype(np.uint16)
    b = make_geotiff(tmp_path / "b.tif", img)
    a = make_geotiff(tmp_path / "a.tif", img, crs=None)
    scene = read_pair_files(b, a)
    assert scene.crs is not None and scene.valid.all()
    np.testing.assert_array_equal(scene.after, img.astype(np.float32))
    small = make_geotiff(tmp_path / "s.tif", img[:, :8], crs=None)
    with pytest.raises(InputError, match="16x8 pixels but"):
        read_pair_files(b, small)
