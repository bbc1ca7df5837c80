"""Read-only queries of the dashboards over the rollup tables (app/analytics/models.py), one module per dashboard.

Every function takes `scope_id` (from app.scope.dashboard_scope) and filters, filters on (scope_id, day) first so
the index is used, always GROUPs BY (a key may be split over several delta rows), and returns plain lists/dicts.
Date buckets (day / week / month) are shared in periods.py.
"""
