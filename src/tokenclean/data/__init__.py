"""Data stage: reading SFT files in several formats, templates, and the ONE label builder."""

from tokenclean.data.formats import FORMATS, Message, Record, read_records
from tokenclean.data.labels import EncodedSample, encode_conversation
from tokenclean.data.templates import TEMPLATES

__all__ = [
    "FORMATS",
    "TEMPLATES",
    "EncodedSample",
    "Message",
    "Record",
    "encode_conversation",
    "read_records",
]
