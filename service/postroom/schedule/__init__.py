"""When jobs fire: ``fires`` is the schedule maths, pure (config schedule -> trigger -> fire
times, catch-up, a fire's retries, the jobs overview); ``runner`` wires it to APScheduler and
claims each fire in the store (``Scheduler``). ``runner`` imports ``fires``, never the other way.
"""
