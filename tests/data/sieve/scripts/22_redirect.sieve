if address :domain :is "from" ["example.org", "zzz.org", "ddd.com"] { redirect "bob@example.test"; }
