require ["fileinto", "imap4flags"];
if address :all :is "from" "alice@example.org" { fileinto "Personal"; }
elsif address :all :contains ["to", "cc"] "example.test" { addflag "\\Flagged"; }
