-- The reference jobs' data (deploy/demo/postroom.yaml: orders-report and statements):
-- one order, and three customers, one each for the lab's bob, carol and dave.
CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT, total REAL);
CREATE TABLE customers (name TEXT, email TEXT, balance REAL);
INSERT INTO orders VALUES (1, 'Ada', 10.5);
INSERT INTO customers VALUES ('Customer 0', 'bob@example.test', 100.0);
INSERT INTO customers VALUES ('Customer 1', 'carol@example.test', 101.0);
INSERT INTO customers VALUES ('Customer 2', 'dave@example.test', 102.0);
