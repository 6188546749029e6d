"""Which band of a raster is which: band names, colour marks and sensor numbering (used by ``detect``, ``check``
and the pair checks to feed a model the bands it was trained on).

Sentinel-2 names its bands ``B01`` .. ``B12`` and ``B8A`` (Google Earth Engine without the zero: ``B1`` ..);
Landsat 8/9 numbers blue, green, red 2, 3, 4 like Sentinel-2, Landsat 4-7 numbers them 1, 2, 3. A raster may also
mark its bands' colours (GDAL's colour interpretation) or name them (``Red``, ``green``). ``changedet stack`` records
the sensor as the ``SPACECRAFT_ID`` tag (``LANDSAT_5``, ``LANDSAT_8``, ``SENTINEL_2A``, ...), which settles the
Landsat numbering where the band names alone cannot. :func:`display_bands` picks the red, green and blue bands the
figures and the QGIS project show with the same identification.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

__all__ = ["band_colours", "display_bands", "identified_bands"]

#: A true-colour display's bands, in display order (red, green, blue), as a model's band names.
_DISPLAY_RGB = ("B04", "B03", "B02")


def display_bands(info: Any) -> tuple[int, int, int] | None:
    """1-based (red, green, blue) bands of a true-colour display of a raster, or None for a one-band grey display.

    The bands a true-colour model reads (:func:`identified_bands` for ``B04``, ``B03``, ``B02``): by Sentinel-2 name,
    else by colour (GDAL's colour interpretation, names such as ``Red`` or ``SR_B4``, Landsat 4-7 or 8/9 numbering
    as the ``SPACECRAFT_ID`` tag says), else bands 4, 3, 2 of an unnamed 13-band (Sentinel-2) raster, else the
    bands named ``B4``, ``B3``, ``B2`` (Landsat numbering without a sensor: true colour for Landsat 8/9, the usual
    false-colour composite for Landsat 4-7); otherwise bands 1, 2, 3 of a raster with 3 or more bands. Used by :mod:`changedet.plotting` (``plot()``, the quick-look,
    ``explore()``) and :mod:`changedet.export` (the QGIS project), so that they show what the model reads.

    ``info`` is a :class:`~changedet.io.metadata.RasterInfo`, an open rasterio dataset or any object with ``count``
    and ``descriptions`` (``colorinterp``, ``dtypes`` and ``tags`` are used where present).

    >>> from types import SimpleNamespace as NS
    >>> display_bands(NS(count=7, descriptions=tuple(f"SR_B{i}" for i in range(1, 8))))
    (4, 3, 2)
    >>> display_bands(NS(count=3, descriptions=(None,) * 3, colorinterp=("blue", "green", "red")))
    (3, 2, 1)
    >>> display_bands(NS(count=7, descriptions=tuple(f"B{i}" for i in range(1, 8))))  # Landsat 5 or 8: not told
    (4, 3, 2)
    >>> display_bands(NS(count=4, descriptions=(None,) * 4)), display_bands(NS(count=1, descriptions=(None,)))
    ((1, 2, 3), None)
    """
    info = _band_info(info)
    found = identified_bands(info, _DISPLAY_RGB)
    if found is not None and len(found) == 3:
        return (found[0], found[1], found[2])
    if info.count == 13:  # Sentinel-2 L1C in sensor order whatever its bands are called
        return (4, 3, 2)
    # Landsat numbering the model will not guess (B1..B7 without a SPACECRAFT_ID tag: 5 or 8?): bands named B4, B3,
    # B2, true colour for Landsat 8/9 and the usual false-colour composite for Landsat 4-7, as before these names
    # were identified; never 1, 2, 3 (coastal/blue/green, or blue/green/red reversed)
    names = [str(d or "").strip().upper() for d in info.descriptions]
    if all(n in names for n in ("B4", "B3", "B2")):
        return (names.index("B4") + 1, names.index("B3") + 1, names.index("B2") + 1)
    return (1, 2, 3) if info.count >= 3 else None


def display_bands_of(count: int, descriptions: Sequence[str | None] | None = None, *,
                     colorinterp: Sequence[Any] | None = None, dtypes: Sequence[str] | None = None,
                     tags: Mapping[str, str] | None = None) -> tuple[int, int, int] | None:
    """:func:`display_bands` of a raster given by its band count, names, colour interpretation, dtypes and tags."""
    return display_bands(SimpleNamespace(count=count, descriptions=tuple(descriptions or ()),
                                         colorinterp=tuple(colorinterp or ()), dtypes=tuple(dtypes or ()),
                                         tags=dict(tags or {})))


def _band_info(info: Any) -> SimpleNamespace:
    """What :func:`band_colours` reads from ``info`` (a RasterInfo, an open rasterio dataset or a stand-in): count,
    descriptions, colour interpretation names (rasterio's ``ColorInterp`` members by name), dtypes and tags."""
    descriptions = tuple(getattr(info, "descriptions", None) or ())
    count = int(getattr(info, "count", None) or len(descriptions))
    interp = tuple(str(getattr(c, "name", c)).lower() for c in (getattr(info, "colorinterp", None) or ()))
    tags = getattr(info, "tags", None)
    if callable(tags):  # a rasterio dataset's tags()
        try:
            tags = tags()
        except Exception:  # noqa: BLE001 - no tags to read: the names and colours still decide
            tags = {}
    return SimpleNamespace(count=count, descriptions=descriptions, colorinterp=interp,
                           dtypes=tuple(str(d) for d in (getattr(info, "dtypes", None) or ())), tags=dict(tags or {}))


def identified_bands(info: Any, want: Sequence[str]) -> list[int] | None:
    """1-based indexes of a model's bands ``want`` in a raster, where the raster tells which band is which.

    By band name (``B04`` in a 13-band stack, any case), else by colour (:func:`band_colours`: GDAL's colour
    interpretation, or names such as ``Red``, ``SR_B4``), else by Sentinel-2 band order for an unnamed 13-band
    raster (:func:`_bands_by_s2_order`). None when nothing identifies them (then only the band count can decide).

    >>> from types import SimpleNamespace as NS
    >>> identified_bands(NS(count=3, colorinterp=(), descriptions=("B02", "B03", "B04")), ["B04", "B03", "B02"])
    [3, 2, 1]
    """
    want = [str(w) for w in want]
    names = [str(d).strip().upper() if d else "" for d in (info.descriptions or ())]
    if want and all(w.upper() in names for w in want):
        return [names.index(w.upper()) + 1 for w in want]
    by_colour = _bands_by_colour(info, want)
    if by_colour is not None:
        return by_colour
    return _bands_by_s2_order(info, want)


def _bands_by_s2_order(info: Any, want: list[str]) -> list[int] | None:
    """1-based indexes of a Sentinel-2 model's bands in a 13-band input whose bands carry no Sentinel-2 names.

    A 13-band raster is taken to hold Sentinel-2 L1C's bands in sensor order (B01..B08, B8A, B09..B12, as
    ``changedet stack`` and most L1C exports write them), so ``s2-rgb`` reads bands 4, 3, 2. None when the input has
    another band count, names any Sentinel-2 band (then names decide) or the model has a band outside that list.
    """
    from changedet.io.products import SENTINEL2_BANDS as S2_BANDS

    names = {str(d).strip().upper() for d in (info.descriptions or ()) if d}
    wanted = [str(w).strip().upper() for w in want]
    if info.count != len(S2_BANDS) or not wanted or names & set(S2_BANDS) or not set(wanted) <= set(S2_BANDS):
        return None
    return [S2_BANDS.index(w) + 1 for w in wanted]


#: Band names of a model that stand for a colour (Sentinel-2's true-colour bands, also numbered without the zero
#: as Google Earth Engine and Landsat 8/9 do, or plain names).
_COLOUR_OF = {"RED": "red", "GREEN": "green", "BLUE": "blue", "R": "red", "G": "green", "B": "blue",
              "B04": "red", "B03": "green", "B02": "blue", "B4": "red", "B3": "green", "B2": "blue"}


#: Landsat Collection 2 surface-reflectance band names of the visible bands: Landsat 8/9 (which has SR_B6, SWIR 1)
#: and Landsat 4-7 (SR_B1-SR_B5 and SR_B7; band 6 is thermal, ST_B6).
_LANDSAT_89 = {"SR_B2": "blue", "SR_B3": "green", "SR_B4": "red"}
_LANDSAT_47 = {"SR_B1": "blue", "SR_B2": "green", "SR_B3": "red"}


def band_colours(info: Any) -> list[str]:
    """The colour each band of ``info`` stands for: ``"red"``, ``"green"``, ``"blue"``, ``"alpha"`` or ``""``.

    GDAL's colour interpretation where it marks one of those (unless it is GDAL's default for 3 or 4 byte bands and
    the names say which colours the bands hold, :func:`_gdal_default_rgb`), else the band description: ``Red``, ``Green``,
    ``Blue`` (any case; also ``R``, ``G``, ``B``), Sentinel-2's ``B04``, ``B03``, ``B02``, or Landsat Collection 2
    ``SR_B4``, ``SR_B3``, ``SR_B2`` (Landsat 8/9) and ``SR_B3``, ``SR_B2``, ``SR_B1`` (Landsat 4-7); the same for
    Level-1 names ``B1`` .. ``B11`` (Landsat 8/9 and Earth Engine's Sentinel-2: ``B4``, ``B3``, ``B2``). Which
    numbering: :func:`_landsat_is_89`.

    >>> from types import SimpleNamespace as NS
    >>> band_colours(NS(colorinterp=("gray",) * 4, descriptions=("Blue", "Green", "Red", "NIR")))
    ['blue', 'green', 'red', '']
    >>> band_colours(NS(colorinterp=(), descriptions=tuple(f"SR_B{i}" for i in range(1, 8))))
    ['', 'blue', 'green', 'red', '', '', '']
    """
    info = _band_info(info)  # also an open rasterio dataset (ColorInterp members, tags())
    interp = list(info.colorinterp)
    names = [str(d).strip().upper() if d else "" for d in info.descriptions]
    level1 = _landsat_level1_names(names)
    dtypes = list(info.dtypes)
    spacecraft = str(info.tags.get("SPACECRAFT_ID", "")).upper()
    is_89 = _landsat_is_89(names, dtypes, level1, spacecraft)
    landsat: dict[str, str] = _LANDSAT_89 if is_89 else ({} if is_89 is None else _LANDSAT_47)
    if level1 and is_89 is None:  # B1 .. Bn that only the sensor could tell apart: no colour from the names
        names = ["" if re.fullmatch(r"B(?:[1-9]|1[01])", n) else n for n in names]
    elif level1 and not is_89:  # B1, B2, B3 are blue, green, red: read them as Landsat 4-7's SR_ names
        names = [f"SR_{n}" if re.fullmatch(r"B[1-9]", n) else n for n in names]
    named = [_COLOUR_OF.get(n) or landsat.get(n) or "" for n in names]
    if _gdal_default_rgb(interp, dtypes) and any(named):
        interp = []  # GDAL's own guess for 3 or 4 byte bands, not a mark anyone set: the names say more
    out = []
    for i in range(max(len(interp), len(names))):
        ci = interp[i] if i < len(interp) else ""
        if ci in ("red", "green", "blue", "alpha"):
            out.append(ci)
            continue
        out.append(named[i] if i < len(named) else "")
    return out


def _gdal_default_rgb(interp: Sequence[str], dtypes: Sequence[str]) -> bool:
    """Whether a colour interpretation is the one GDAL gives any 3- or 4-band byte GeoTIFF written without
    ``PHOTOMETRIC`` (red, green, blue by position, the fourth band alpha or undefined): a stack of blue.tif,
    green.tif, red.tif, or of Landsat 5's B1, B2, B3, carries it whatever its bands hold."""
    rgb = list(interp[:3]) == ["red", "green", "blue"]
    return (rgb and len(interp) in (3, 4) and (len(interp) == 3 or interp[3] in ("alpha", "undefined"))
            and bool(dtypes) and all(d == "uint8" for d in dtypes))


def _landsat_level1_names(names: Sequence[str]) -> bool:
    """Whether band names are Level-1 style numbers ``B1`` .. ``B11`` (also ``B6_VCID_1``), at least one of B1-B4
    among them, and no Sentinel-2 name (``B01``, ``B8A``): Landsat's own file names, or Earth Engine's."""
    named = [n for n in names if n]
    return bool(named) and all(re.fullmatch(r"B(?:[1-9]|1[01]|6_VCID_[12])", n) for n in named) and bool(
        {"B1", "B2", "B3", "B4"} & set(named))


def _landsat_is_89(names: Sequence[str], dtypes: Sequence[str], level1: bool, spacecraft: str = "") -> bool | None:
    """Whether Landsat band names (upper case) number the bands as Landsat 8/9 and Sentinel-2 do (2 blue, 3 green,
    4 red) rather than Landsat 4-7 (1 blue, 2 green, 3 red).

    The ``SPACECRAFT_ID`` tag decides where there is one (``LANDSAT_4`` .. ``LANDSAT_7``: no; ``LANDSAT_8``,
    ``LANDSAT_9``, ``SENTINEL_2*``: yes). Level-1 names ``B1`` .. ``B11``: Landsat 8/9 when B10 or B11 (its thermal
    bands) is present; Landsat 4-7 when B6_VCID_* (Landsat 7's thermal) is, or for a whole scene (all of B1-B5 and
    B7) without B6 (``changedet stack`` leaves Landsat 4-7's thermal B6 out) or in 8 bits (Landsat 4-7 Level-1
    products are, Landsat 8/9's 16-bit); Landsat 8/9 numbering without B1 (``B2, B3, B4`` from Earth Engine's
    Sentinel-2 or Landsat 8); None (undecided: the names give no colour) for other ``B1`` .. ``Bn``, which either
    numbering fits (a B1-B4 export of Landsat 5 or 8, the b1, b2, b3 files of a split orthophoto). Surface
    reflectance ``SR_B*``: Landsat 8/9 when SR_B6 (SWIR 1) is present, Landsat 4-7 when SR_B7 is without SR_B6
    (its band 6 is ST_B6), Landsat 8/9 when only its numbering finds blue, green and red (``SR_B2``, ``SR_B3``,
    ``SR_B4`` alone), None for other subsets holding SR_B1.

    >>> _landsat_is_89(["B1", "B2", "B3", "B4", "B5", "B6", "B7"], ["uint8"] * 7, True)
    False
    >>> _landsat_is_89(["B1", "B2", "B3"], ["uint8"] * 3, True) is None  # a split orthophoto, or Landsat 5?
    True
    >>> _landsat_is_89(["B1", "B2", "B3"], ["uint16"] * 3, True, "LANDSAT_5")
    False
    >>> _landsat_is_89(["B1", "B2", "B3", "B4"], ["uint16"] * 4, True) is None  # Landsat 5 or 8? Only a tag can say
    True
    >>> _landsat_is_89(["SR_B2", "SR_B3", "SR_B4"], ["uint16"] * 3, False)
    True
    """
    if re.fullmatch(r"LANDSAT_[4-7]", spacecraft):
        return False
    if re.fullmatch(r"LANDSAT_[89]|SENTINEL_?2[A-D]?", spacecraft):
        return True
    have = set(names)
    if level1:
        if have & {"B10", "B11"}:
            return True
        if any(n.startswith("B6_VCID") for n in have):
            return False
        if {"B1", "B2", "B3", "B4", "B5", "B7"} <= have:  # a whole Landsat scene
            if "B6" not in have or (dtypes and all(d == "uint8" for d in dtypes)):
                return False
            return None
        return None if "B1" in have else True  # (an 8-bit B2, B3, B4 is Earth Engine's visual Sentinel-2 export)
    if "SR_B6" in have:
        return True
    if "SR_B7" in have:  # Landsat 4-7's SR bands: SR_B1-SR_B5 and SR_B7 (its band 6 is ST_B6)
        return False
    rgb = {"blue", "green", "red"}
    if rgb <= {_LANDSAT_89[n] for n in have if n in _LANDSAT_89} and "SR_B1" not in have:
        return True
    return None if "SR_B1" in have else False


def _bands_by_colour(info: Any, want: Sequence[str]) -> list[int] | None:
    """1-based bands of ``info`` whose colour (:func:`band_colours`) matches a model's colour bands.

    For an RGBA drone orthomosaic, an RGB + near-infrared raster or a Landsat stack fed to a 3-band RGB model: the
    bands marked or named red, green and blue (each once), in the model's order. None when the model's bands are
    not colours or the input does not mark each of them exactly once.
    """
    found = [_COLOUR_OF.get(str(w).strip().upper()) for w in want]
    colours = [c for c in found if c is not None]
    have = band_colours(info)
    if not colours or len(colours) != len(found) or any(have.count(c) != 1 for c in colours):
        return None
    return [have.index(c) + 1 for c in colours]


