from django.urls import re_path

from .views import ModelListView

urlpatterns = [
    re_path(r"^models/?$", ModelListView.as_view(), name="model-list"),
]
