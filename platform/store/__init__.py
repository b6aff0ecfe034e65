"""Metadata store: SQLAlchemy 2 schema, Alembic migrations run from code, frozen records."""
