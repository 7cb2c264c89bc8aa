"""The scheduled close: every tenant's books closed through yesterday, once the day has ended.

The server runs :meth:`DailyClose.run_once` every ``METER_RECOGNIZE_EVERY`` seconds (an hour by default): for each
tenant whose last close is before yesterday (in its reporting time zone), it closes through yesterday, which steps
through every month end in between (:mod:`meter.money.revenue.recognize`). A close already done is not redone, so
the job and ``POST /v1/revenue/recognize`` never post twice. One tenant's failure is reported on stderr and tried
again at the next run; the others are closed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from meter.billing.invoicer import Invoicer
from meter.money.revenue.recognize import Close, last_close

__all__ = ["DailyClose"]


class DailyClose:
    def __init__(self, invoicer: Invoicer, tenants: Callable[[], list[str]]) -> None:
        self.invoicer, self.tenants = invoicer, tenants

    def run_once(self, now: datetime | None = None) -> dict[str, Close]:
        """Closes through yesterday every tenant not closed that far yet; what each close did."""
        now = now or datetime.now(UTC)
        done = {}
        for tenant in self.tenants():
            try:
                zone = ZoneInfo(self.invoicer.catalog.get_revenue_settings(tenant).timezone)
                yesterday = now.astimezone(zone).date() - timedelta(days=1)
                last = last_close(self.invoicer.store, tenant)
                if last is None or last < yesterday:
                    done[tenant] = self.invoicer.recognize(tenant, yesterday, now)
            except Exception as e:  # noqa: BLE001 - one tenant never stops the others; the next run tries again
                print(f"meter: the revenue close of tenant {tenant!r} failed: {e!r}", file=sys.stderr, flush=True)
        return done
