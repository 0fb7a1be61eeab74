"""`/docs` works on an offline cluster: Swagger UI's page and assets come from the gateway."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from distillery.settings import Settings
from services.gateway.main import create_app


def test_docs_page_loads_its_assets_from_the_gateway(tmp_path):
    settings = Settings(_env_file=None, cache_dir=tmp_path / "cache", work_dir=tmp_path / "work")
    with TestClient(create_app(settings, migrate_on_start=False)) as client:
        page = client.get("/docs")
        assert page.status_code == 200 and "swagger-ui" in page.text
        urls = re.findall(r"""(?:src|href)=["']([^"']+)["']|url: ?'([^']+)'""", page.text)
        urls = [a or b for a, b in urls]
        assert urls, page.text
        assert not [u for u in urls if u.startswith(("http:", "https:", "//"))], urls
        for url in urls:
            r = client.get(url)
            assert r.status_code == 200, url
        js = client.get("/docs/assets/swagger-ui-bundle.js")
        assert "javascript" in js.headers["content-type"] and len(js.content) > 100_000
        assert client.get("/openapi.json").json()["info"]["title"] == "Distillery gateway"
        assert client.get("/redoc").status_code == 404  # it would load from a CDN
