"""Webhooks, a rule's POST to a receiver: ``signing`` (Standard Webhooks: the ids and
signatures a receiver checks; pure) and ``delivery`` (the durable queue that posts them, with
retries and a lease per delivery, like the outbox). The incoming half enqueues
(``delivery.WebhookRequest``); nothing here imports incoming/.

Its own package rather than outgoing/: the incoming rules' executor enqueues webhooks, and
incoming/ and outgoing/ stand side by side, neither importing the other (the package's
layers); webhooks in outgoing/ would set the incoming half on top of the outgoing one.
"""
