"""Head functions for Mask-LRP: parsed corpora, head statistics, head masks."""

from .corpus import ParsedSentence, parse_conllu, read_conllu
from .mask import HeadMask
from .statistics import RELATIONS, HeadStatistics, head_statistics

__all__ = [
    "RELATIONS", "HeadMask", "HeadStatistics", "ParsedSentence", "head_statistics", "parse_conllu", "read_conllu",
]
