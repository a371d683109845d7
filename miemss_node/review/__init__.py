"""The radiologist in the loop: held results, per-finding decisions, reviewers, audit, feedback."""
