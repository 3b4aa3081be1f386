"""export/quantize.py's command line: flags refused before any work, in argparse's words (exit 2).
The quantization itself: tests/integration/test_export.py."""

from __future__ import annotations

import pytest

from export.quantize import main


@pytest.mark.parametrize("value", ["0", "-5"])
def test_max_calibration_images_below_one_is_a_usage_error(value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--calibration-dir", str(tmp_path), "--max-calibration-images", value])
    assert exit_info.value.code == 2
    assert "--max-calibration-images: must be at least 1" in capsys.readouterr().err
