"""Recognise what a folder of band files is: a Sentinel-2 product, a Landsat scene, or neither.

Used by :func:`~changedet.io.stack.stack_bands` to pick, name and order the bands it stacks and to find their sensing
date and sensor; nothing here opens a raster. Recognised:

- Sentinel-2 SAFE products (L1C and L2A), as the ``.SAFE`` folder, one of its ``GRANULE/<granule>`` folders, an
  ``IMG_DATA`` folder or the downloaded ``.zip`` (:func:`safe_band_files`: the finest file of each band, in sensor
  order, without the ``TCI``/``AOT``/``WVP``/``SCL`` layers); the sensing date and satellite from the granule's and
  product's metadata XML, else from product, granule and file names in the current and the pre-2017 format.
- Folders of Sentinel-2 band files (``B01`` .. ``B12``, ``B8A`` in the names: :func:`band_name_from_file`), with the
  layers that are not reflectance bands told apart.
- Landsat 4-9 scenes, as USGS (Collections 1 and 2) and Google Earth Engine name the band files, or beside an
  ``MTL.txt``/``_MTL.xml`` file (:func:`landsat_band_files`: the reflective 30 m bands under Landsat's names), with
  the satellite and ``DATE_ACQUIRED`` from the MTL file.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from changedet.errors import InputError
from changedet.io.raster import date_from_name

__all__ = ["RASTER_SUFFIXES", "SENTINEL2_BANDS", "band_name_from_file", "landsat_band_files", "list_band_files",
           "safe_band_files"]


#: Sentinel-2 MSI bands in sensor (wavelength) order.
SENTINEL2_BANDS: tuple[str, ...] = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12",
)  # fmt: skip

#: File suffixes considered rasters when listing a folder.
RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".img", ".vrt", ".bil", ".dat", ".envi")

_S2_TOKEN = re.compile(r"(?:^|[^A-Za-z0-9])B(0?[1-9]|1[0-2]|8A)(?:$|[^A-Za-z0-9])", re.IGNORECASE)
#: Sentinel-2 layers that are not reflectance bands: true colour (``TCI``, Earth Search's ``visual``, Earth Engine's
#: ``TCI_R``), the L2A aerosol, water vapour and scene classification maps, cloud/snow probabilities, quality and
#: mask layers, previews. Matched at the end of a file name, before an L2A resolution suffix (``_SCL_20m``).
_S2_AUX = re.compile(
    r"(?:^|[_\-. ])(?:TCI(?:_[RGB])?|AOT|WVP|SCL|CLD|SNW|CLDPRB|SNWPRB|PVI|PREVIEW|VISUAL|THUMBNAIL|QA\w*|MSK_\w+)"
    r"(?:_\d+m)?$",
    re.IGNORECASE,
)
#: ``S2A_``, ``S2B_``, ... in a product, granule or file name: which Sentinel-2 satellite.
_S2_SAT = re.compile(r"(?:^|[^A-Za-z0-9])S2([A-D])_", re.IGNORECASE)
#: Product, granule and file names of the Sentinel-2 format used until December 2016 (``S2A_OPER_PRD_MSIL1C_PDMC_...``,
#: ``S2A_OPER_MSI_L1C_TL_SGS__...``, Sen2Cor's ``S2A_USER_...``): their first date is the *processing* time; the
#: product name carries the sensing date after ``_V``.
_S2_OLD_FORMAT = re.compile(r"^S2[A-D]_(?:OPER|USER)_", re.IGNORECASE)
#: Names that only Sentinel-2 products carry: tile and sensing time (``T31UDQ_20190501T105031_B02``), product types.
_S2_NAME = re.compile(r"(?:^|_)(?:T\d{2}[A-Z]{3}_\d{8}T\d{6}|MSIL1C|MSIL2A|MSI_L1C|MSI_L2A)(?:_|$)", re.IGNORECASE)
_NATURAL = re.compile(r"(\d+)")


def _natural_key(text: str) -> list[object]:
    return [int(tok) if tok.isdigit() else tok.lower() for tok in _NATURAL.split(text)]


def band_name_from_file(path: str | os.PathLike[str]) -> str | None:
    """The Sentinel-2 band name (``B01`` .. ``B12``, ``B8A``) in a file name, or None.

    >>> band_name_from_file("T40QBM_20180328T065919_B8A.tif"), band_name_from_file("x_b2.tif")
    ('B8A', 'B02')
    >>> band_name_from_file("red.tif") is None
    True
    """
    matches = _S2_TOKEN.findall(Path(os.fspath(path)).stem)
    if not matches:
        return None
    tok = matches[-1].upper()
    return "B8A" if tok == "8A" else f"B{int(tok):02d}"


_RES_SUFFIX = re.compile(r"_(\d+)m$", re.IGNORECASE)


@dataclass
class _Layout:
    """What a folder (or list of files) holds: the band files to stack and what is known about them."""

    paths: list[Path]
    names: list[str]
    sensor: str = "other"  # "sentinel2", "landsat" or "other"
    spacecraft: str | None = None  # SPACECRAFT_ID tag: LANDSAT_5, SENTINEL_2A, SENTINEL_2, ...
    date: _dt.date | None = None  # sensing date from product metadata or product names
    skipped: list[str] = field(default_factory=list)  # files left out (names)


def _read_text(path: Path, limit: int = 4 * 1024 * 1024) -> str:
    try:
        if path.stat().st_size > limit:
            return ""
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _s2_product_info(names: Sequence[str], xml_texts: Sequence[str]) -> tuple[_dt.date | None, str | None]:
    """Sensing date and ``SPACECRAFT_ID`` of a Sentinel-2 product from its metadata and names.

    ``names`` are the product (``.SAFE``) and granule names, most telling first; ``xml_texts`` the granule's and the
    product's metadata files. The date is the granule's ``SENSING_TIME``, else the product's
    ``PRODUCT_START_TIME``/``DATATAKE_SENSING_START``, else the validity start ``_V<date>`` of an old-format product
    name, else the first date of a name in the current format (never the processing date of an old-format name).

    >>> _s2_product_info(["S2A_OPER_PRD_MSIL1C_PDMC_20161205T183354_R051_V20161130T105422_20161130T105422.SAFE"], [])
    (datetime.date(2016, 11, 30), 'SENTINEL_2A')
    >>> _s2_product_info(["S2B_MSIL2A_20190501T105029_N0212_R051_T31UDQ_20190501T130520.SAFE"], [])
    (datetime.date(2019, 5, 1), 'SENTINEL_2B')
    """
    date: _dt.date | None = None
    for pattern in (r"<SENSING_TIME[^>]*>\s*(\d{4}-\d{2}-\d{2})",
                    r"<(?:PRODUCT_START_TIME|DATATAKE_SENSING_START)[^>]*>\s*(\d{4}-\d{2}-\d{2})"):
        hit = next((m for m in (re.search(pattern, t) for t in xml_texts) if m is not None), None)
        if hit is not None:
            try:
                date = _dt.date.fromisoformat(hit.group(1))
                break
            except ValueError:
                continue
    for name in names:
        if date is not None:
            break
        v = re.search(r"_V(\d{8})T\d{6}", name)
        if v is not None:
            date = date_from_name(v.group(1))
        elif not _S2_OLD_FORMAT.match(name):
            date = date_from_name(name)
    sat = next((m.group(1).upper() for m in (re.search(r"<SPACECRAFT_NAME>\s*Sentinel-2([A-D])", t, re.IGNORECASE)
                                             for t in xml_texts) if m is not None), None)
    if sat is None:
        sat = next((m.group(1).upper() for m in (_S2_SAT.search(n) for n in [*names, *xml_texts]) if m is not None),
                   None)
    return date, (f"SENTINEL_2{sat}" if sat else None)


def _enclosing_safe(d: Path) -> tuple[Path | None, Path | None]:
    """The ``.SAFE`` folder that ``d`` is (or lies in) and its granule folder (the one ``d`` is in, else the only
    one), each None when there is none."""
    d = Path(os.path.abspath(d))
    chain = [d, *list(d.parents)[:4]]
    safe = next((p for p in chain if p.suffix.upper() == ".SAFE"), None)
    granule = next((p for p in chain if p.parent.name == "GRANULE"), None)
    if granule is None and safe is not None:
        found = [p for p in (safe / "GRANULE").glob("*") if p.is_dir()]
        granule = found[0] if len(found) == 1 else None
    return safe, granule


def _s2_folder_info(d: Path, file_names: Sequence[str] = ()) -> tuple[_dt.date | None, str | None]:
    """:func:`_s2_product_info` for a folder on disk: its enclosing ``.SAFE`` product and granule (names and
    metadata XML), then the file names, then the folder's name."""
    safe, granule = _enclosing_safe(d)
    names = [p.name for p in (safe, granule) if p is not None]
    xml = [_read_text(f) for g in (granule, safe) if g is not None for f in sorted(g.glob("*.xml")) if f.is_file()]
    date, spacecraft = _s2_product_info([*names, *file_names, d.name], xml)
    if spacecraft is None and safe is not None:
        spacecraft = "SENTINEL_2"
    return date, spacecraft


def safe_band_files(folder: str | os.PathLike[str]) -> list[Path] | None:
    """The band files of a Sentinel-2 SAFE product (L1C or L2A), finest resolution per band, in sensor order.

    ``folder`` is the ``.SAFE`` folder, one of its ``GRANULE/<granule>`` folders, an ``IMG_DATA`` folder, or the
    product's ``.zip`` as downloaded (its files are then read in place through GDAL's ``/vsizip/``). L1C products
    keep one JP2 per band in ``IMG_DATA``; L2A products keep each band at several resolutions in ``IMG_DATA/R10m``,
    ``R20m`` and ``R60m`` (``..._B02_10m.jp2``) and have no B10: the finest file of each band is taken. Other
    layers (``TCI``, ``AOT``, ``WVP``, ``SCL``) are skipped. Returns None when ``folder`` does not look like a
    SAFE product.

    Raises
    ------
    InputError
        A product with several granules (older multi-tile L1C products): give one ``GRANULE/<granule>`` folder.
    """
    layout = _safe_layout(Path(os.fspath(folder)))
    return None if layout is None else layout.paths


def _safe_layout(d: Path) -> _Layout | None:
    if d.is_file() and d.suffix.lower() == ".zip":
        import zipfile

        try:
            with zipfile.ZipFile(d) as z:
                members = [m for m in z.namelist() if not m.endswith("/")]
                meta = [m for m in members if m.lower().endswith(".xml") and (
                    m.count("/") == 1 or (m.count("/") == 3 and "/GRANULE/" in m))]
                xml = [z.read(m).decode("utf-8", "replace") for m in meta if z.getinfo(m).file_size < 4 * 1024 * 1024]
        except (OSError, zipfile.BadZipFile) as exc:
            raise InputError(f"{d}: not a readable ZIP archive ({exc}); download the product again.") from exc
        root = f"/vsizip/{{{d.resolve().as_posix()}}}"  # braces: an absolute path that survives pathlib
        granules = sorted({m.split("/IMG_DATA/")[0] for m in members if "/IMG_DATA/" in m})
        files = [Path(f"{root}/{m}") for m in members if "/IMG_DATA/" in m]
        layout = _safe_pick(d, granules, files)
        if layout is not None:
            names = [n for m in members[:1] for n in m.split("/")[:1]] + [Path(g).name for g in granules] + [d.stem]
            layout.date, spacecraft = _s2_product_info(names, xml)
            layout.spacecraft = spacecraft or "SENTINEL_2"
        return layout
    if (d / "IMG_DATA").is_dir():
        img_dirs = [d / "IMG_DATA"]
    elif d.name == "IMG_DATA":
        img_dirs = [d]
    else:
        img_dirs = sorted(p for p in d.glob("GRANULE/*/IMG_DATA") if p.is_dir())
    if not img_dirs:
        return None
    layout = _safe_pick(d, [str(p.parent) for p in img_dirs],
                        sorted(f for f in img_dirs[0].rglob("*") if f.is_file()))
    if layout is not None:
        layout.date, spacecraft = _s2_folder_info(img_dirs[0].parent, [p.name for p in layout.paths])
        layout.spacecraft = spacecraft or "SENTINEL_2"
    return layout


def _safe_pick(source: Path, granules: Sequence[str], files: Sequence[Path]) -> _Layout | None:
    """The finest file of each Sentinel-2 band among ``files`` (of one granule), in sensor order."""
    if len(granules) > 1:
        raise InputError(
            f"{source}: a Sentinel-2 product with {len(granules)} granules "
            f"({', '.join(Path(g).name for g in granules)}); stack one of them: give its GRANULE/<name> folder."
        )
    best: dict[str, tuple[int, Path]] = {}
    skipped = []
    for f in files:
        if f.suffix.lower() not in RASTER_SUFFIXES:
            continue
        band = None if _S2_AUX.search(f.stem) else band_name_from_file(f)
        if band is None:
            skipped.append(f.name)  # TCI, AOT, WVP, SCL, ...
            continue
        m = _RES_SUFFIX.search(f.stem)
        res = int(m.group(1)) if m else 0
        if band not in best or res < best[band][0]:
            best[band] = (res, f)
    if not best:
        return None
    order = [b for b in SENTINEL2_BANDS if b in best]
    return _Layout([best[b][1] for b in order], order, "sentinel2", skipped=skipped)


#: A Landsat product id at the start of a file name, as USGS (``LC08_L2SP_196025_20200612_20200824_02_T1_``,
#: Collections 1 and 2) and Google Earth Engine (``LT05_199026_20110615_``) name band files; any case.
_LANDSAT_ID = re.compile(
    r"^L[COTEM]0(?P<num>[4-9])_(?:[A-Z0-9]{4}_)?\d{6}_\d{8}(?:_\d{8}_\d{2}_[A-Z0-9]{2})?_", re.IGNORECASE
)
#: A Landsat band at the end of a file name: ``B4``, ``SR_B4``, ``ST_B10``.
_LANDSAT_BAND = re.compile(r"(?:^|[_\-. ])((?:SR_|ST_)?B\d{1,2})$", re.IGNORECASE)


def _landsat_reflective(band: str, number: int) -> bool:
    """Whether a Landsat band name (``SR_B4``, ``B6``, ``ST_B10``, ``QA_PIXEL``) of Landsat ``number`` is one of the
    reflective 30 m bands: ``SR_B1`` .. ``SR_B7``; Landsat 8/9 ``B1`` .. ``B7`` and ``B9`` (not the 15 m
    panchromatic ``B8``, nor the thermal ``B10``/``B11``); Landsat 4-7 ``B1`` .. ``B5`` and ``B7`` (not the thermal
    ``B6``, nor Landsat 7's panchromatic ``B8``)."""
    m = re.fullmatch(r"(SR_)?B(\d{1,2})", band.upper())
    if m is None:
        return False  # ST_B*, QA_*, angle bands
    n = int(m.group(2))
    if m.group(1):
        return 1 <= n <= 7
    return n in ((1, 2, 3, 4, 5, 6, 7, 9) if number >= 8 else (1, 2, 3, 4, 5, 7))


def _read_mtl(d: Path) -> tuple[int | None, _dt.date | None]:
    """The Landsat number (``SPACECRAFT_ID = "LANDSAT_8"``) and ``DATE_ACQUIRED`` of an ``MTL.txt``/``_MTL.xml``
    file in ``d``, each None where there is none."""
    number: int | None = None
    date: _dt.date | None = None
    if not d.is_dir():
        return None, None
    for f in sorted(d.iterdir()):
        if not re.search(r"(?:^|_)MTL\.(?:txt|xml)$", f.name, re.IGNORECASE) or not f.is_file():
            continue
        text = _read_text(f, 1024 * 1024)
        sc = re.search(r"SPACECRAFT_ID\W*LANDSAT_([4-9])\b", text, re.IGNORECASE)
        acq = re.search(r"DATE_ACQUIRED\W*(\d{4}-\d{2}-\d{2})", text, re.IGNORECASE)
        number = number or (int(sc.group(1)) if sc else None)
        if date is None and acq is not None:
            try:
                date = _dt.date.fromisoformat(acq.group(1))
            except ValueError:
                pass
    return number, date


def _landsat_band(path: Path, mtl_number: int | None) -> tuple[str, int, str] | None:
    """``(scene, landsat number, band)`` of a Landsat band file: a file named with a Landsat product id, or, beside
    an MTL file that names the satellite, a file whose name ends with a band (``B4.TIF``). None otherwise."""
    stem = path.stem
    m = _LANDSAT_ID.match(stem)
    if m is not None:
        return stem[: m.end()].upper(), int(m.group("num")), stem[m.end():].upper()
    if mtl_number is not None:
        b = _LANDSAT_BAND.search(stem)
        if b is not None:
            return stem[: b.start(1)].upper(), mtl_number, b.group(1).upper()
    return None


def _landsat_layout(source: Path, files: Sequence[Path], mtl_number: int | None = None, *,
                    select: bool = True) -> _Layout | None:
    """The Landsat bands among ``files``, in band order with Landsat's names, or None when no file is a Landsat band.

    ``select``: keep only the reflective 30 m bands of one scene (:func:`_landsat_reflective`; surface reflectance
    ``SR_B*`` where a scene has both), as for a folder; False keeps every given file (an explicit list), but all of
    them must then be Landsat files.
    """
    parsed = {p: _landsat_band(p, mtl_number) for p in files}
    if not any(parsed.values()) or (not select and not all(parsed.values())):
        return None
    kept = {p: v for p, v in parsed.items() if v is not None and (not select or _landsat_reflective(v[2], v[1]))}
    scenes: dict[str, list[tuple[int, str, Path]]] = {}
    for p, (scene, _num, band) in kept.items():
        scenes.setdefault(scene, []).append((int(re.sub(r"\D", "", band) or 0), band, p))
    if len(scenes) > 1:
        raise InputError(
            f"{source}: holds the bands of {len(scenes)} Landsat scenes "
            f"({', '.join(s.rstrip('_') or '?' for s in sorted(scenes))}); stack one scene at a time: put each scene's "
            "files in its own folder."
        )
    if not scenes:
        raise InputError(
            f"{source}: Landsat files ({', '.join(p.name for p in files)}) but no reflective 30 m band among them "
            "(B1..B7, SR_B1..SR_B7; the thermal, panchromatic and QA layers are not stacked)."
        )
    bands = next(iter(scenes.values()))
    if select and any(b.startswith("SR_") for _n, b, _p in bands):
        bands = [t for t in bands if t[1].startswith("SR_")]
    bands = sorted(bands, key=lambda t: (t[0], t[1])) if select else bands
    chosen = {p for _n, _b, p in bands}
    number = next(v[1] for p, v in kept.items() if v is not None and p in chosen)
    return _Layout([p for _n, _b, p in bands], [b for _n, b, _p in bands], "landsat",
                   spacecraft=f"LANDSAT_{number}", skipped=[p.name for p in files if p not in chosen])


def landsat_band_files(folder: str | os.PathLike[str]) -> list[Path] | None:
    """The reflective 30 m band files of a Landsat scene folder, in band order, or None.

    The band files are those named with a Landsat product id, as USGS delivers them (Collection 2 Level-2
    ``LC09_L2SP_...``, Level-1 ``LC08_L1TP_...``, Collection 1) and as Google Earth Engine exports them
    (``LT05_199026_20110615_B1.tif``; any case), or, in a folder with an ``MTL.txt`` that names the satellite, files
    whose names end with a band (``B4.TIF``). Kept: the surface-reflectance bands ``SR_B1`` .. ``SR_B7`` (Landsat
    8/9) or ``SR_B1`` .. ``SR_B5``, ``SR_B7`` (Landsat 4-7); else ``B1`` .. ``B7`` and ``B9`` (Landsat 8/9 cirrus) or
    ``B1`` .. ``B5``, ``B7`` (Landsat 4-7). Skipped: the 15 m panchromatic ``B8`` (it would put every band on a 15 m
    grid), the thermal bands (``ST_B10``, ``B10``, ``B11``, ``ST_B6``, ``B6``; other units and resolution), the
    ``QA`` layers and angle/metadata files. None when the folder does not hold Landsat band files.

    Raises
    ------
    InputError
        The folder holds the bands of several scenes (stack each scene from its own folder), or Landsat files but
        no reflective band.
    """
    d = Path(os.fspath(folder))
    if not d.is_dir():
        return None
    layout = _landsat_layout(d, list_band_files(d), _read_mtl(d)[0])
    return None if layout is None else layout.paths


def list_band_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Raster files of a folder (by suffix, hidden files skipped), in natural order."""
    d = Path(os.fspath(folder))
    files = [
        p
        for p in d.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in RASTER_SUFFIXES
    ]
    return sorted(files, key=lambda p: _natural_key(p.name))


def _only_sentinel2(folder: Path, paths: Sequence[Path], skipped: Sequence[str]) -> bool:
    """Whether Sentinel-2 band files are surely Sentinel-2's (no other sensor has a B8A, Sen2Cor's SCL/AOT/WVP
    layers or a true-colour TCI, or names files after a tile and sensing time) when no name gives the satellite."""
    return (any(band_name_from_file(p) == "B8A" for p in paths)
            or any(re.search(r"(?:^|[_\-. ])(?:SCL|AOT|WVP|TCI)(?:_\d+m)?$", Path(s).stem, re.IGNORECASE)
                   for s in skipped)
            or any(_S2_NAME.search(n) for n in [folder.name, *(p.stem for p in paths)]))
