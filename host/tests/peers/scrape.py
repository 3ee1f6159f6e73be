"""Scrape a Twill /metrics endpoint and parse it with prometheus_client's
own text parser (the reference Python implementation of the format).

    scrape.py URL [ACCEPT]

Prints one JSON object: {"samples": [[name, {labels}, value], ...],
"families": {name: type}, "content_type": "..."}. Exits 1 if the text
does not parse.
"""

import json
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def main():
    url = sys.argv[1]
    req = urllib.request.Request(url)
    if len(sys.argv) > 2:
        req.add_header("Accept", sys.argv[2])
    with urllib.request.urlopen(req, timeout=10) as resp:
        content_type = resp.headers.get("Content-Type", "")
        text = resp.read().decode("utf-8")
    if "openmetrics" in content_type:
        from prometheus_client.openmetrics.parser import (
            text_string_to_metric_families as om_parse,
        )

        families = list(om_parse(text))
    else:
        families = list(text_string_to_metric_families(text))
    out = {"samples": [], "families": {}, "content_type": content_type}
    for f in families:
        out["families"][f.name] = f.type
        for s in f.samples:
            out["samples"].append([s.name, s.labels, s.value])
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
