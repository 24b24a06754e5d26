"""Faithfulness of pair explanations: remove the evidence an explanation ranks first.

``flipping``
    pixel/patch flipping of image pairs (:func:`evaluate`, :func:`flipping_curve`).
``text``
    token flipping of sentence pairs, masking or deleting tokens
    (:func:`evaluate_text`, :func:`text_flipping_curve`), and the text methods.
``integrated_jacobians``
    integrated Jacobians (Moeller et al. 2023), the path-integral baseline for text.
``groundtruth``
    precision@k of pair explanations on tasks whose true interactions are known
    (:func:`precision_at_k`, :func:`score_methods`, the patch-glyph task).
``pointing``
    the second-order pointing game on collage pairs whose tile correspondence is
    known (:func:`pointing_game`, :func:`make_collage_pairs`, :func:`pointing_share`).
``text_pointing``
    its text analogue, sentence pairs sharing exactly one content word
    (:func:`text_pointing_game`, :func:`make_shared_word_pairs`).
``cross_pointing``
    its image × text analogue, a collage of photos and a prompt naming one of them
    (:func:`cross_pointing_game`, :func:`make_named_collages`).
"""

from .cross_pointing import *  # noqa: F401,F403
from .cross_pointing import __all__ as _cross_pointing_all

from .flipping import *  # noqa: F401,F403
from .flipping import __all__ as _flipping_all
from .groundtruth import *  # noqa: F401,F403
from .groundtruth import __all__ as _groundtruth_all
from .integrated_jacobians import *  # noqa: F401,F403
from .pointing import *  # noqa: F401,F403
from .pointing import __all__ as _pointing_all
from .integrated_jacobians import __all__ as _ij_all
from .text import *  # noqa: F401,F403
from .text import __all__ as _text_all
from .text_pointing import *  # noqa: F401,F403
from .text_pointing import __all__ as _text_pointing_all

__all__ = (list(_flipping_all) + list(_ij_all) + list(_text_all) + list(_groundtruth_all) + list(_pointing_all)
           + list(_text_pointing_all) + list(_cross_pointing_all))
