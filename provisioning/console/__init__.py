"""The officer's console: every alert judged by a person, the camera crop beside the watch-list photo.

Its rule: a match event is a lead, not a finding; nothing is acted on until a named reviewer (two, where the
deployment requires it) has seen the crops beside the reference photo and decided. The console takes only events
that pass the one check `events tail` makes (provisioning.tail), sends each outcome back as a signed review
command with a key that can sign reviews and nothing else, and never holds a key that issues shards. Every
login, view and decision goes into its own hash-chained audit log (journal.py); it keeps evidence no longer
than the deployment's retention, and none once an alert is dismissed.
"""
