"""Peer networks for the benchmark, built with random weights (timing only).

Each builder returns ``(module, version string, what exactly is timed)`` or
raises ImportError when its package (the ``benchmark`` extra) is missing:

* SAM image encoders (``segment-anything``): ``ImageEncoderViT`` on a 1024x1024
  image, what micro-sam computes once per image before the first prompt. ViT-B
  uses SAM's published configuration; "ViT-T-sized" is the same encoder class
  at ViT-Tiny width (192 wide, 12 blocks, 3 heads), because MobileSAM's TinyViT
  (micro-sam's vit_t) is not installable here. The modules are imported without
  running ``segment_anything/__init__.py``, which needs torchvision.
* MONAI ``BasicUNet`` 2D/3D with its default features (32, 32, 64, 128, 256, 32).
* nnU-Net's default plain conv U-Net (``dynamic_network_architectures``
  ``PlainConvUNet``) with the layout nnU-Net's planner gives a 256x256 2D /
  96^3 3D patch: 7 / 6 stages, features 32 doubling to 512 / 320, two
  convolutions per stage, InstanceNorm + LeakyReLU.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
import types

SAM_INPUT = 1024


def _version(distribution: str) -> str:
    return f"{distribution} {importlib.metadata.version(distribution)}"


def _sam_encoder_class():
    if "segment_anything" not in sys.modules:
        spec = importlib.util.find_spec("segment_anything")
        if spec is None:
            raise ImportError("segment-anything is not installed")
        package = types.ModuleType("segment_anything")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["segment_anything"] = package
    from segment_anything.modeling.image_encoder import ImageEncoderViT

    return ImageEncoderViT


def sam_encoder(size: str):
    """SAM's image encoder, "vit_b" or "vit_t_sized": (1, 3, 1024, 1024) -> (1, 256, 64, 64)."""
    from functools import partial

    import torch

    encoder_class = _sam_encoder_class()
    width, depth, heads, global_blocks = {"vit_b": (768, 12, 12, (2, 5, 8, 11)),
                                          "vit_t_sized": (192, 12, 3, (2, 5, 8, 11))}[size]
    module = encoder_class(
        depth=depth, embed_dim=width, img_size=SAM_INPUT, mlp_ratio=4,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=heads, patch_size=16,
        qkv_bias=True, use_rel_pos=True, global_attn_indexes=global_blocks, window_size=14, out_chans=256,
    )
    what = (f"segment_anything ImageEncoderViT {size} ({width} wide, {depth} blocks, {heads} heads), "
            f"1x3x{SAM_INPUT}x{SAM_INPUT}")
    return module.eval(), _version("segment-anything"), what


def sam_click_decoder():
    """SAM's prompt encoder and mask decoder as ``sam_model_registry`` builds them (256 wide, a
    two-way transformer of depth 2, 64x64 embeddings of a 1024x1024 image): what runs per click."""
    _sam_encoder_class()
    from segment_anything.modeling.mask_decoder import MaskDecoder
    from segment_anything.modeling.prompt_encoder import PromptEncoder
    from segment_anything.modeling.transformer import TwoWayTransformer

    embedding = SAM_INPUT // 16
    prompt_encoder = PromptEncoder(embed_dim=256, image_embedding_size=(embedding, embedding),
                                   input_image_size=(SAM_INPUT, SAM_INPUT), mask_in_chans=16)
    decoder = MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(depth=2, embedding_dim=256,
                                                                                  mlp_dim=2048, num_heads=8),
                          transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256)
    return prompt_encoder.eval(), decoder.eval()


def monai_basic_unet(spatial_dims: int, in_channels: int = 1, out_channels: int = 2):
    from monai.networks.nets import BasicUNet

    module = BasicUNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels)
    return module.eval(), _version("monai"), f"monai BasicUNet {spatial_dims}D default features"


def nnunet_plain_unet(spatial_dims: int, in_channels: int = 1, num_classes: int = 2):
    import torch.nn as nn
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
    norm = nn.InstanceNorm2d if spatial_dims == 2 else nn.InstanceNorm3d
    stages, cap = (7, 512) if spatial_dims == 2 else (6, 320)
    features = [min(32 * 2 ** i, cap) for i in range(stages)]
    module = PlainConvUNet(
        input_channels=in_channels, n_stages=stages, features_per_stage=features, conv_op=conv,
        kernel_sizes=[[3] * spatial_dims] * stages, strides=[[1] * spatial_dims] + [[2] * spatial_dims] * (stages - 1),
        n_conv_per_stage=[2] * stages, num_classes=num_classes, n_conv_per_stage_decoder=[2] * (stages - 1),
        conv_bias=True, norm_op=norm, norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=False,
    )
    what = f"dynamic_network_architectures PlainConvUNet {spatial_dims}D, {stages} stages, features {features}"
    return module.eval(), _version("dynamic-network-architectures"), what


PEERS = {
    "sam_vit_b": (lambda: sam_encoder("vit_b"), 2),
    "sam_vit_t_sized": (lambda: sam_encoder("vit_t_sized"), 2),
    "monai_basicunet_2d": (lambda: monai_basic_unet(2), 2),
    "monai_basicunet_3d": (lambda: monai_basic_unet(3), 3),
    "nnunet_plainunet_2d": (lambda: nnunet_plain_unet(2), 2),
    "nnunet_plainunet_3d": (lambda: nnunet_plain_unet(3), 3),
}
