#!/bin/sh
# The entrypoint of the local test-service images of `cargo xtask test --docker`: one Debian
# root file system with every server, the server chosen by the command. It prepares a fresh
# data directory and honours what the testcontainers modules pass: MariaDB's database
# (MARIADB_DATABASE, root without password) and PostgreSQL's user and database
# (POSTGRES_USER, POSTGRES_DB; trust authentication).
set -e
case "$1" in
mariadbd | mysqld)
    shift
    data=/tmp/mariadb-data
    mkdir -p "$data" /run/mysqld
    chown mysql:mysql "$data" /run/mysqld
    mariadb-install-db --user=mysql --datadir="$data" --auth-root-authentication-method=normal \
        --skip-test-db >/dev/null
    db="${MARIADB_DATABASE:-test}"
    cat >/tmp/mariadb-init.sql <<SQL
CREATE DATABASE IF NOT EXISTS \`$db\`;
CREATE USER IF NOT EXISTS 'root'@'%';
GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION;
SQL
    exec mariadbd --user=mysql --datadir="$data" --socket=/run/mysqld/mysqld.sock \
        --skip-name-resolve --init-file=/tmp/mariadb-init.sql "$@"
    ;;
postgres)
    shift
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    data=/tmp/postgres-data
    user="${POSTGRES_USER:-postgres}"
    db="${POSTGRES_DB:-$user}"
    mkdir -p "$data" /run/postgresql
    chown postgres:postgres "$data" /run/postgresql
    as_postgres="setpriv --reuid=postgres --regid=postgres --init-groups"
    $as_postgres "$bin/initdb" -D "$data" -U "$user" --auth=trust >/dev/null
    if [ "$db" != postgres ]; then
        echo "CREATE DATABASE \"$db\"" | $as_postgres "$bin/postgres" --single -D "$data" postgres >/dev/null
    fi
    exec $as_postgres "$bin/postgres" -D "$data" -k /run/postgresql "$@"
    ;;
*)
    exec "$@"
    ;;
esac
