"""The API's docs pages (Swagger UI and ReDoc), served with a policy that lets the browser load nothing from
anywhere but this server: their files come from drf-spectacular-sidecar, and the stock pages' links to a CDN
(web fonts, a vendor's logo) are blocked rather than fetched."""
from typing import Any

from drf_spectacular.views import SpectacularRedocView, SpectacularSwaggerView
from rest_framework.request import Request
from rest_framework.response import Response

SAME_ORIGIN_ONLY = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
                    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:")


class SameOriginOnly:
    def finalize_response(self, request: Request, response: Response, *args: Any, **kwargs: Any) -> Response:
        response = super().finalize_response(request, response, *args, **kwargs)
        response["Content-Security-Policy"] = SAME_ORIGIN_ONLY
        return response


class SwaggerView(SameOriginOnly, SpectacularSwaggerView):
    pass


class RedocView(SameOriginOnly, SpectacularRedocView):
    template_name = "api/redoc.html"
