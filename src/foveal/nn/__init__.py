"""foveal.nn: the shared backbones, their registry and weight converters.

ViT (Dosovitskiy et al., arXiv:2010.11929) with the DINOv2 (arXiv:2304.07193) interface, used by
the nvdinov2, mae and classification networks; ConvNeXt V2 (Woo et al., arXiv:2301.00808) with the
same interface, used by mae (FCMAE) and classification. The backbones TAO's classification_pyt
names, under TAO's names and state-dict keys: FAN (arXiv:2204.12451), ResNet / ResNet-D,
MiT (SegFormer's encoder, arXiv:2105.15203), TAO's DINOv2 ViTs (SwiGLU, registers) and the
SigLIP / CLIPA ViT, and Hiera (arXiv:2306.00989, through transformers). Importing this package
registers them all.
"""

# imported for their registrations
from foveal.nn import fan, hiera, mit, openclip_vit, resnet, tao_vit  # noqa: F401
from foveal.nn.checkpoint_filter import checkpoint_filter_fn
from foveal.nn.convert_hf import convert_hf_state_dict, load_hf_folder, vit_from_hf_config
from foveal.nn.convnextv2 import ConvNeXtV2, convnextv2_checkpoint_filter_fn
from foveal.nn.registry import create_backbone, list_backbones, register_backbone
from foveal.nn.vit import VisionTransformer, layer_id_for_param

__all__ = [
    "ConvNeXtV2",
    "VisionTransformer",
    "checkpoint_filter_fn",
    "convert_hf_state_dict",
    "convnextv2_checkpoint_filter_fn",
    "create_backbone",
    "layer_id_for_param",
    "list_backbones",
    "load_hf_folder",
    "register_backbone",
    "vit_from_hf_config",
]
