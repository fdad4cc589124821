require ["fileinto", "imap4flags", "regex"];
if address :domain :is "from" "example.org" { fileinto "Personal"; }
if address :domain :matches "to" "*.org" { addflag "org"; }
if address :domain :regex "from" "^(zzz|ddd)\\.(org|com)$" { addflag "zzz"; }
