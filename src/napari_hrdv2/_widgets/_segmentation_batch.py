"""The Batch tab of the Segmentation dock: apply the model to a folder of images."""

from __future__ import annotations

from magicgui.widgets import CheckBox, ComboBox, FileEdit, PushButton

from ..core.errors import InputError
from ._dock import tab_page


class BatchTab:
    """The Batch tab's controls (the dock connects Apply); :attr:`page` is the tab."""

    def __init__(self) -> None:
        self.folder_in = FileEdit(label="Folder in", mode="d")
        self.folder_out = FileEdit(label="Folder out", mode="d")
        self.folder_format = ComboBox(label="Format", choices=["tif", "png"], value="tif")
        self.overwrite = CheckBox(text="Overwrite existing", value=False)
        self.apply_folder = PushButton(text="Apply to folder")
        self.page = tab_page(self.folder_in, self.folder_out, self.folder_format, self.overwrite, self.apply_folder)

    def request(self) -> tuple[str, str, dict[str, object]]:
        """(folder in, folder out, ``suffix``/``overwrite`` keywords) as chosen; InputError if a folder is missing."""
        folder_in, folder_out = str(self.folder_in.value or ""), str(self.folder_out.value or "")
        if folder_in in ("", ".") or folder_out in ("", "."):
            raise InputError("Choose both an input folder of images and an output folder.")
        return (
            folder_in,
            folder_out,
            {"suffix": f".{self.folder_format.value}", "overwrite": bool(self.overwrite.value)},
        )
