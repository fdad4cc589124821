require ["fileinto", "comparator-i;octet"];
if header :comparator "i;octet" :contains "subject" "Test" { fileinto "Work"; }
if header :comparator "i;octet" :is "precedence" "list" { fileinto "Lists"; }
