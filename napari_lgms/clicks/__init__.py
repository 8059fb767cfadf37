"""Interactive segmentation by clicks: promptable networks, the click session, simulated users."""
from napari_lgms.clicks.encoding import Click
from napari_lgms.clicks.session import ClickSession

__all__ = ["Click", "ClickSession"]
