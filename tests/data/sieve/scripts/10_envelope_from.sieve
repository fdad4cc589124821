require ["envelope", "fileinto"];
if envelope :all :is "from" "alice@example.org" { fileinto "Personal"; }
if envelope :domain :contains "from" "zzz" { fileinto "Misc"; }
