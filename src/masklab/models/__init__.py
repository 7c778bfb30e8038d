"""Models. Importing this package registers every model component (see ``registries.populate``)."""

from masklab.models import backbones, losses, mal, mask2former, necks, semantic  # noqa: F401 - imported to register
