"""The hospital's own systems, spoken to from the station: the only place that knows the patient (its local registry),
so the only place that can compose a message naming them. `hospital.hl7` builds the signed report as an HL7 v2.5.1
ORU^R01 and reads the LIS's orders (OML^O21, ORM^O01); `hospital.mllp` carries them (an MLLP client behind a durable
outbox, and a listener for orders); `hospital.private` keeps the station's private files (the registry, the send
journal, the outboxes). Nothing here reaches the store: what leaves the hospital is decided elsewhere.
"""
