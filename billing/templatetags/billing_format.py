from django import template

from core import formatting

register = template.Library()

register.filter("count", formatting.count)
register.filter("money", formatting.money)
register.filter("percent", formatting.percent)
