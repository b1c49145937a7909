"""INT8 calibration (data, calibrators, sensitivity) — planned, see the open issues."""
