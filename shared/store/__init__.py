"""PostgreSQL through SQLAlchemy: tables, migrations, the unit of work and its locks."""
