"""Kafka: every kafka-python client of the project is built here (consumer, producer, admin,
group-less reader), the topics are created here, and the results reader lives here."""
