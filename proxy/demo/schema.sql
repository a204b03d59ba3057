-- pgveil demo schema: a small shop with personal data in it.
CREATE TABLE customers (
  id int PRIMARY KEY,
  name text NOT NULL,
  email text UNIQUE,
  ssn text UNIQUE,
  card_number text,
  birth_date date,
  vip boolean NOT NULL DEFAULT false,
  password_hash text
);
INSERT INTO customers (id, name, email, ssn, card_number, birth_date, vip, password_hash)
SELECT g,
       (ARRAY['Ada','Alan','Grace','Edsger','Barbara','Donald','Frances','Ken'])[1 + g % 8]
         || ' ' || (ARRAY['Quill','Stone','Marsh','Vale','Reed','Hart'])[1 + g % 6],
       'user' || g || '@example.com',
       lpad((900 + g % 99)::text, 3, '0') || '-' || lpad((g % 97)::text, 2, '0') || '-' || lpad((1000 + g)::text, 4, '0'),
       '4000' || lpad((g * 7919)::text, 12, '0'),
       DATE '1950-01-01' + (g * 397) % 18000,
       g % 10 = 0,
       '$2b$12$' || md5('pw' || g) || md5('salt' || g)
FROM generate_series(1, 200) g;

CREATE TABLE orders (
  id int PRIMARY KEY,
  customer_id int NOT NULL REFERENCES customers(id),
  total numeric(10,2) NOT NULL,
  note text
);
INSERT INTO orders SELECT g, 1 + g % 200, (g * 7.25)::numeric(10,2), 'order ' || g
FROM generate_series(1, 1000) g;

CREATE ROLE analyst LOGIN PASSWORD 'analyst';
CREATE ROLE boss LOGIN PASSWORD 'boss';
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO analyst;
ANALYZE;
