"""SNOMED CT codes of the structures napari-medadapt segments, for DICOM SEG segment descriptions.

A class name is matched by words (``"necrotic / non-enhancing core"``, ``"left kidney"``, ``"L3 vertebra"``); an
unknown name gets the generic category and type *Tissue* (SCT 85756007), so the SEG is still valid.
"""

from __future__ import annotations

import re

#: (category code, meaning), (type code, meaning) per recognised structure; first matching pattern wins.
_ANATOMY = ("91723000", "Anatomical Structure")
_ALTERED = ("49755003", "Morphologically Altered Structure")
_TISSUE = ("85756007", "Tissue")
_TABLE: tuple[tuple[str, tuple[str, str], tuple[str, str]], ...] = (
    (r"necro|non.?enhanc|ncr|net\b", _ALTERED, ("6574001", "Necrosis")),
    (r"edema|oedema|\bed\b", _ALTERED, ("79654002", "Edema")),
    (r"enhanc|\bet\b", _ALTERED, ("108369006", "Neoplasm")),
    (r"tumou?r|neoplasm|lesion|\bwt\b|\btc\b|glioma|mass", _ALTERED, ("108369006", "Neoplasm")),
    (r"left.*kidney|kidney.*left", _ANATOMY, ("18639004", "Left kidney")),
    (r"right.*kidney|kidney.*right", _ANATOMY, ("9846003", "Right kidney")),
    (r"kidney|renal", _ANATOMY, ("64033007", "Kidney")),
    (r"liver|hepat", _ANATOMY, ("10200004", "Liver")),
    (r"spleen|splen", _ANATOMY, ("78961009", "Spleen")),
    (r"pancrea", _ANATOMY, ("15776009", "Pancreas")),
    (r"vertebra|spine|spinal column", _ANATOMY, ("51282000", "Vertebra")),
    (r"gall.?bladder", _ANATOMY, ("28231008", "Gallbladder")),
    (r"stomach", _ANATOMY, ("69695003", "Stomach")),
    (r"aorta", _ANATOMY, ("15825003", "Aorta")),
    (r"lung", _ANATOMY, ("39607008", "Lung")),
    (r"heart", _ANATOMY, ("80891009", "Heart")),
    (r"brain", _ANATOMY, ("12738006", "Brain")),
    (r"bone", _ANATOMY, ("272673000", "Bone")),
)


def snomed_codes(name: str) -> tuple[tuple[str, str], tuple[str, str]]:
    """``((category code, meaning), (type code, meaning))`` in SNOMED CT (SCT) for a class name."""
    text = name.lower()
    for pattern, category, kind in _TABLE:
        if re.search(pattern, text):
            return category, kind
    return _TISSUE, _TISSUE


def coded(name: str) -> tuple[object, object]:
    """:func:`snomed_codes` as ``pydicom.sr.coding.Code`` objects (category, type)."""
    from pydicom.sr.coding import Code

    (category, category_meaning), (kind, kind_meaning) = snomed_codes(name)
    return Code(category, "SCT", category_meaning), Code(kind, "SCT", kind_meaning)
