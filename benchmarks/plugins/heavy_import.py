"""A plugin that imports what real plugins import, and does nothing else: the cost of imports per run.

The module list is the one measured for the sandbox's design (50-77 ms to import on 2 cores).
"""

import asyncio  # noqa: F401
import decimal  # noqa: F401
import email.parser  # noqa: F401
import http.client  # noqa: F401
import json
import sqlite3  # noqa: F401
import ssl  # noqa: F401
import urllib.request  # noqa: F401
import xml.etree.ElementTree  # noqa: F401

description = "imports asyncio, ssl, urllib.request, email.parser, http.client, json, decimal, xml.etree, sqlite3"
version = "1.0"


def run(**params: object) -> object:
    return json.loads(json.dumps(params))
