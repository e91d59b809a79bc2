"""AMI Factory's domain: models, rules, AWS adapters and the steps of the imaging workflow.

Shipped to every function as the ``SharedLayer`` (see template.yaml).
"""
