"""The Django view of the wsgi scenario: one module, a template rendering 20 rows.

Settings are configured in code (no project directory), with CommonMiddleware (it sets
Content-Length, as in most projects); no database is touched."""

import os

from django.conf import settings

HERE = os.path.dirname(os.path.abspath(__file__))
settings.configure(
    DEBUG=False, ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__, SECRET_KEY="bench-only", INSTALLED_APPS=[],
    MIDDLEWARE=["django.middleware.common.CommonMiddleware"],
    TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates", "DIRS": [HERE]}],
)

import django  # noqa: E402

django.setup()

from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.shortcuts import render  # noqa: E402
from django.urls import path  # noqa: E402

ROWS = [{"id": i, "name": f"item {i}", "price": f"{i * 1.25:.2f}", "stock": (i * 7) % 11} for i in range(20)]


def rows(request):
    return render(request, "rows.html", {"rows": ROWS, "title": "Inventory"})


urlpatterns = [path("", rows)]
app = get_wsgi_application()
