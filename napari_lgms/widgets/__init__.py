"""napari dock widgets (Qt through qtpy; torch loads only when a run starts)."""
from napari_lgms.widgets.finetune import FinetuneWidget
from napari_lgms.widgets.segment import SegmentWidget

__all__ = ["FinetuneWidget", "SegmentWidget"]
