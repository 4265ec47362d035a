"""Migration policy: which tenant a file belongs to, how long it is kept, in which tier, with
which index tags and immutability; read from a TOML file (README.md, "Migration policy")."""

from pyengine.policy.dicom import HEAD_BYTES, DicomInfo, read_dicom_head
from pyengine.policy.lifecycle import evaluate_lifecycle, lifecycle_policy
from pyengine.policy.load import load_policy, parse_policy
from pyengine.policy.model import (
    Placement,
    Policy,
    PolicyError,
    PolicyFileError,
    Tenant,
)

__all__ = [
    "HEAD_BYTES",
    "DicomInfo",
    "Placement",
    "Policy",
    "PolicyError",
    "PolicyFileError",
    "Tenant",
    "evaluate_lifecycle",
    "lifecycle_policy",
    "load_policy",
    "parse_policy",
    "read_dicom_head",
]
