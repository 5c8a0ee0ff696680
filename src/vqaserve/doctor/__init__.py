"""`vqa doctor`: is this machine able to serve (or fine-tune) the configured model, and if not,
what to do. report.py holds the report and the environment checks, model.py the model checks and
memory.py the peak-memory forecast of the asked workload."""

from __future__ import annotations

import platform

from vqaserve.doctor.model import Workload, check_model
from vqaserve.doctor.report import (
    PACKAGES,
    Finding,
    Report,
    check_adapters,
    check_devices,
    check_versions,
    package_versions,
    render,
    to_json,
)
from vqaserve.settings import Settings

__all__ = ["PACKAGES", "Finding", "Report", "Workload", "diagnose", "render", "to_json"]


def diagnose(settings: Settings, work: Workload | None = None) -> Report:
    report = Report(python=platform.python_version(), packages=package_versions())
    check_versions(report)
    check_devices(report)
    check_model(report, settings, work or Workload())
    check_adapters(report, settings)
    return report
