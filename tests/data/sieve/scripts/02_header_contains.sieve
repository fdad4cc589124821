require "fileinto";
if header :contains "subject" "invoice" { fileinto "Invoices"; stop; }
if header :contains ["to", "cc"] "zzz.org" { fileinto "Misc"; }
