"""SAM-family networks in pure torch: no I/O, no weights, no GUI."""

from .build import ARCHITECTURES, build_sam, infer_architecture
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .sam import Sam, input_size
from .tiny_vit import TinyViT
from .transformer import TwoWayTransformer
from .vit import ImageEncoderViT

__all__ = [
    "ARCHITECTURES",
    "ImageEncoderViT",
    "MaskDecoder",
    "PromptEncoder",
    "Sam",
    "TinyViT",
    "TwoWayTransformer",
    "build_sam",
    "infer_architecture",
    "input_size",
]
