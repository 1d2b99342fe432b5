"""A worker process for the payment approval task: what you deploy, one or several of.

    tether dev                  # in another terminal: NATS + engine + dashboard
    python examples/worker.py   # logs a ready line; Ctrl-C or SIGTERM stops it cleanly

Then trigger runs from anywhere (examples/flask_view.py, or your own code with
`payment_approval.run_no_wait(...)`) and decide them in the dashboard, with
`tether approve RUN_ID`, or by pushing the decision event. A waiting run holds no slot, so
a few slots serve any number of runs waiting for people.
"""

from __future__ import annotations

from payment_approval import app, payment_approval

if __name__ == "__main__":
    app.worker("payments", tasks=[payment_approval], slots=10).run()
