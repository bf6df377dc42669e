CREATE TABLE t (a INTEGER, b TEXT); INSERT INTO t VALUES (1, 'x'), (2, 'y');
-- script
SELECT b FROM t WHERE a = 2