"""Add up the JUnit XML reports of one scripts/test run and print one closing line.

Usage: summarize.py REPORT_DIR [SKIPPED-SUITE-REASON ...]. Exits 1 if any test failed or errored.
"""

import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def main() -> int:
    report_dir, skipped_suites = Path(sys.argv[1]), sys.argv[2:]
    passed = failed = skipped = 0
    for path in sorted(report_dir.glob("*.xml")):
        for case in ET.parse(path).getroot().iter("testcase"):
            outcome = {child.tag for child in case}
            if outcome & {"failure", "error"}:
                failed += 1
            elif "skipped" in outcome:
                skipped += 1
            else:
                passed += 1
    for reason in skipped_suites:
        print(f"skipped suite: {reason}")
    print(f"total: {passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
