"""A dataset's errors name the config key it was built from (``dataset.val``).

A dataset class names its own arguments (``FolderSegDataset.split: ...``) but cannot know which
config entry built it; the code that builds ``dataset.<split>`` adds the key, so a config with a
train and a val dataset of the same type says which one is wrong.
"""

from __future__ import annotations

import re

from masklab.errors import MasklabError


def with_config_key(exc: MasklabError, key: str) -> MasklabError:
    """``exc`` led by ``"<key>: "`` (same error type), or ``exc`` itself when it already names ``key``
    (a config builder error such as ``cfg.yaml: dataset.val.classes: ...``)."""
    text = str(exc)
    if re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", text):
        return exc
    return type(exc)(f"{key}: {text}")
